//! A device that reads a file: it imports `wasi:filesystem`, which Snakeway does not grant,
//! so loading it fails with a clear message. (A test fixture.)

wit_bindgen::generate!({ world: "snakeway-device", path: "../../../wit" });

use exports::snakeway::device::device::Guest;
use snakeway::device::types::{Action, Phases, Registration};

struct Sneaky;

impl Guest for Sneaky {
    fn init(_: String) -> Result<Registration, String> {
        Ok(Registration { phases: Phases::ON_REQUEST })
    }

    fn on_request() -> Action {
        let _ = std::fs::read_to_string("/etc/passwd");
        Action::Continue
    }

    fn on_request_body(_: Vec<u8>, _: bool) -> Action {
        Action::Continue
    }

    fn before_proxy() -> Action {
        Action::Continue
    }

    fn after_proxy(_: u16) -> Action {
        Action::Continue
    }

    fn on_response(_: u16) -> Action {
        Action::Continue
    }
}

export!(Sneaky);
