//! User-agent classification (with woothee).

use std::cell::RefCell;
use std::fmt;

use serde::Serialize;
use woothee::parser::Parser;
use woothee::woothee::VALUE_UNKNOWN;

/// How many bytes of a `user-agent` header are parsed; the rest is ignored. Real user agents
/// are well under this; the cap bounds the parser's work on hostile input.
pub const MAX_USER_AGENT_BYTES: usize = 512;

/// What the `user-agent` header says about the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UserAgent {
    /// The kind of device.
    pub device: DeviceClass,
    /// Whether the client is automated: a crawler (Googlebot, Bingbot, ...) or an HTTP library
    /// (curl, wget, Java, Python, ...).
    pub bot: bool,
    /// The agent's name: the browser (`"Chrome"`, `"Safari"`), crawler (`"Googlebot"`) or
    /// library (`"HTTP Library"`), when recognised.
    pub browser: Option<String>,
    /// The operating system (`"Windows 10"`, `"iPhone"`, `"Android"`), when recognised.
    pub os: Option<String>,
}

/// The kind of device a client runs on. Serialized in snake_case (`"desktop"`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceClass {
    /// A desktop or laptop computer.
    Desktop,
    /// A phone (smartphones and feature phones).
    Mobile,
    /// A tablet (iPad; Android without `Mobile` in its user agent).
    Tablet,
    /// An automated client: crawler or HTTP library.
    Bot,
    /// A game console, TV, e-reader or similar appliance.
    Appliance,
    /// Not recognised.
    Unknown,
}

// === impl DeviceClass ===

impl DeviceClass {
    /// The class's name as serialized and logged.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Desktop => "desktop",
            Self::Mobile => "mobile",
            Self::Tablet => "tablet",
            Self::Bot => "bot",
            Self::Appliance => "appliance",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for DeviceClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl UserAgent ===

impl UserAgent {
    /// Classifies a `user-agent` header value. Only the first [`MAX_USER_AGENT_BYTES`] bytes
    /// are looked at, and only up to the first byte that is not UTF-8.
    pub fn parse(header: &[u8]) -> UserAgent {
        let capped = &header[..header.len().min(MAX_USER_AGENT_BYTES)];
        let text = match std::str::from_utf8(capped) {
            Ok(text) => text,
            // Cut at the first invalid byte (also a code point split by the cap).
            Err(e) => std::str::from_utf8(&capped[..e.valid_up_to()]).unwrap_or_default(),
        };
        let text = text.trim();
        let Some(result) = Parser::new().parse(text) else {
            return Self::unknown();
        };
        let known = |s: &str| (!s.is_empty() && s != VALUE_UNKNOWN).then(|| s.to_owned());
        let bot = result.category == "crawler" || result.name == "HTTP Library";
        let device = if bot {
            DeviceClass::Bot
        } else {
            match result.category {
                "pc" => DeviceClass::Desktop,
                "smartphone" if is_tablet(result.os, text) => DeviceClass::Tablet,
                "smartphone" | "mobilephone" => DeviceClass::Mobile,
                "appliance" => DeviceClass::Appliance,
                _ => DeviceClass::Unknown,
            }
        };
        UserAgent {
            device,
            bot,
            browser: known(result.name),
            os: known(result.os),
        }
    }

    fn unknown() -> Self {
        Self {
            device: DeviceClass::Unknown,
            bot: false,
            browser: None,
            os: None,
        }
    }
}

/// How many classified user agents each thread remembers (direct-mapped, by hash).
const CACHE_SLOTS: usize = 128;

/// A cache slot: the (capped) header bytes and what they classified as.
type Slot = Option<(Box<[u8]>, UserAgent)>;

thread_local! {
    static CACHE: RefCell<Vec<Slot>> = RefCell::new(vec![None; CACHE_SLOTS]);
}

/// [`UserAgent::parse`] behind a small per-thread cache: real traffic repeats a few user
/// agents, and parsing costs microseconds while a hit costs a hash, a compare and a clone. No
/// lock (each worker thread has its own), bounded memory (`CACHE_SLOTS` entries of at most
/// [`MAX_USER_AGENT_BYTES`] per thread); colliding agents just evict each other.
pub(crate) fn classify(header: &[u8]) -> UserAgent {
    let key = capped(header);
    let slot = (hash(key) % CACHE_SLOTS as u64) as usize;
    let cached = CACHE.try_with(|cache| {
        let cache = cache.borrow();
        match &cache[slot] {
            Some((k, ua)) if **k == *key => Some(ua.clone()),
            _ => None,
        }
    });
    if let Ok(Some(ua)) = cached {
        return ua;
    }
    let ua = UserAgent::parse(key);
    let _ = CACHE.try_with(|cache| {
        cache.borrow_mut()[slot] = Some((key.into(), ua.clone()));
    });
    ua
}

/// The part of a `user-agent` header that is classified: at most [`MAX_USER_AGENT_BYTES`].
pub(crate) fn capped(header: &[u8]) -> &[u8] {
    &header[..header.len().min(MAX_USER_AGENT_BYTES)]
}

/// A fast non-cryptographic hash (FxHash's mixing over 8-byte words); collisions only cost a
/// cache miss.
pub(crate) fn hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
    let mix = |h: u64, w: u64| (h.rotate_left(5) ^ w).wrapping_mul(K);
    let mut chunks = bytes.chunks_exact(8);
    let mut h = bytes.len() as u64;
    for chunk in &mut chunks {
        h = mix(h, u64::from_le_bytes(chunk.try_into().unwrap_or_default()));
    }
    let mut last = [0u8; 8];
    last[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    mix(h, u64::from_le_bytes(last))
}

/// woothee files tablets under "smartphone"; tell them apart the way the vendors mean it:
/// an iPad, or Android without the `Mobile` token (Google's guidance for tablet UAs).
fn is_tablet(os: &str, ua: &str) -> bool {
    os == "iPad" || (os == "Android" && !ua.contains("Mobile"))
}

/// Runs the parser once so its lazily compiled patterns are ready before the first request.
pub(crate) fn warm_up() {
    let _ = UserAgent::parse(
        b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
          (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_gives_what_parse_gives() {
        let agents: Vec<Vec<u8>> = (0..3 * CACHE_SLOTS)
            .map(|i| format!("Mozilla/5.0 (Windows NT 10.0) Chrome/{i}.0 Safari/537.36").into())
            .chain([b"Googlebot/2.1".to_vec(), b"\xff".to_vec(), Vec::new()])
            .collect();
        for _ in 0..2 {
            for agent in &agents {
                assert_eq!(classify(agent), UserAgent::parse(agent));
            }
        }
        let long = vec![b'a'; 2 * MAX_USER_AGENT_BYTES];
        assert_eq!(classify(&long), UserAgent::parse(&long));
        assert_eq!(
            classify(&long[..MAX_USER_AGENT_BYTES]),
            UserAgent::parse(&long)
        );
    }

    #[test]
    fn capped_and_cut_at_invalid_utf8() {
        let mut long = b"Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) ".to_vec();
        long.resize(10 * MAX_USER_AGENT_BYTES, b'x');
        let ua = UserAgent::parse(&long);
        assert_eq!(ua.device, DeviceClass::Mobile);

        let ua = UserAgent::parse(b"Googlebot/2.1 (+http://www.google.com/bot.html)\xff\xfe");
        assert!(ua.bot);
        assert_eq!(UserAgent::parse(b"\xff"), UserAgent::unknown());
        assert_eq!(UserAgent::parse(b""), UserAgent::unknown());
    }
}
