//! "Did you mean …?": the closest of the valid names to a misspelt one.

/// Names at least this similar (Jaro-Winkler, 0 to 1) to what was written are suggested.
const SIMILAR: f64 = 0.8;

/// The choice closest to `input`, if one is close enough to be what was meant.
///
/// A number is never "corrected" to another number (`500` is not a typo of `504`).
pub(crate) fn closest<'a>(
    input: &str,
    choices: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    if input.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let input = input.to_ascii_lowercase();
    choices
        .into_iter()
        .map(|c| (strsim::jaro_winkler(&input, &c.to_ascii_lowercase()), c))
        .filter(|(score, _)| *score >= SIMILAR)
        // The first of equally close choices, so the answer follows the choices' order.
        .fold(None, |best: Option<(f64, &str)>, (score, c)| match best {
            Some((top, _)) if top >= score => best,
            _ => Some((score, c)),
        })
        .map(|(_, c)| c)
}

/// `"; did you mean `x`?"` when a choice is close to `input`, else nothing.
pub(crate) fn did_you_mean<'a>(input: &str, choices: impl IntoIterator<Item = &'a str>) -> String {
    closest(input, choices).map_or_else(String::new, |c| format!("; did you mean `{c}`?"))
}

#[cfg(test)]
mod tests {
    use super::closest;

    #[test]
    fn suggests_only_what_is_close() {
        let keys = ["name", "strategy", "upstreams", "http2", "ca_file"];
        assert_eq!(closest("upstream", keys), Some("upstreams"));
        assert_eq!(closest("stratgey", keys), Some("strategy"));
        assert_eq!(closest("Name", keys), Some("name"));
        assert_eq!(closest("colour", keys), None);
        assert_eq!(closest("500", ["502", "503", "504"]), None);
        assert_eq!(closest("anything", []), None);
        assert_eq!(closest("ap", ["api", "app"]), Some("api"));
    }
}
