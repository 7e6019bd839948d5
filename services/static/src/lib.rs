//! The static-file outcome: `static_dir` routes serve files from a directory.
//!
//! This is tower-http's [`ServeDir`] (GET/HEAD, content types, conditional requests, ranges,
//! and its own traversal protection) behind Snakeway's body type. The request path it sees has
//! already been normalized and checked by the server.

use std::convert::Infallible;
use std::path::Path;

use http::{Request, Response};
use snakeway_core::Body;
use tower::ServiceExt;
use tower_http::services::ServeDir;

/// Serves the files below one directory.
#[derive(Clone, Debug)]
pub struct StaticFiles {
    dir: ServeDir,
}

// === impl StaticFiles ===

impl StaticFiles {
    /// Files from `root`; a request for a directory serves its `index.html` when `index` is
    /// `Some("index.html")`.
    pub fn new(root: &Path, index: Option<&str>) -> Self {
        let dir = ServeDir::new(root).append_index_html_on_directories(index == Some("index.html"));
        Self { dir }
    }

    /// Answers one request.
    pub async fn serve(&self, req: Request<Body>) -> Response<Body> {
        let result: Result<_, Infallible> = self.dir.clone().oneshot(req).await;
        let Ok(response) = result;
        response.map(Body::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn serves_a_file_and_404s_a_missing_one() {
        let dir = std::env::temp_dir().join(format!("snakeway-static-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hello.txt"), "hi").unwrap();
        let files = StaticFiles::new(&dir, Some("index.html"));

        let ok = files
            .serve(Request::get("/hello.txt").body(Body::empty()).unwrap())
            .await;
        assert_eq!(ok.status(), 200);
        assert_eq!(
            &ok.into_body().collect().await.unwrap().to_bytes()[..],
            b"hi"
        );

        let missing = files
            .serve(Request::get("/nope.txt").body(Body::empty()).unwrap())
            .await;
        assert_eq!(missing.status(), 404);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
