//! The identities of recent clients, per thread: the requests of one client (a keep-alive
//! connection, a browser's page load) share one [`ClientIdentity`] instead of each building
//! its own (the address walk, the GeoIP lookup, the user-agent strings and the `Arc`).
//!
//! An identity is a pure function of the device's configuration and three inputs: the peer
//! address, the `x-forwarded-for` lines (read only from a trusted peer) and the `user-agent`
//! (read only when classified, at most [`MAX_USER_AGENT_BYTES`](crate::MAX_USER_AGENT_BYTES)).
//! An entry holds those inputs and is used only when all three are equal, byte for byte, and
//! the device is the same (a reload builds a new device, with a new id, so its identities are
//! looked up afresh).
//!
//! Bounded: [`SLOTS`] entries per thread, direct-mapped by a hash of the inputs (a collision
//! replaces the entry), and inputs over [`MAX_KEY_BYTES`] are not kept.

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;

use crate::client_ip::X_FORWARDED_FOR;
use crate::identity::ClientIdentity;
use crate::user_agent;

/// Entries per thread.
const SLOTS: usize = 64;

/// Inputs longer than this (`x-forwarded-for` lines and `user-agent` together) are not kept.
const MAX_KEY_BYTES: usize = 1024;

/// What an identity was built from, as read from one request.
#[derive(Clone, Copy)]
pub(crate) struct Inputs<'r> {
    /// The peer's address (canonical).
    pub(crate) peer: IpAddr,
    /// The request's headers, when the `x-forwarded-for` lines are read (a trusted peer).
    pub(crate) forwarded: Option<&'r HeaderMap>,
    /// The `user-agent` header, capped at
    /// [`MAX_USER_AGENT_BYTES`](crate::MAX_USER_AGENT_BYTES), when user agents are classified
    /// (`Some(None)`: there is none).
    pub(crate) agent: Option<Option<&'r [u8]>>,
}

/// One kept identity and the inputs it was built from.
struct Entry {
    device: u64,
    peer: IpAddr,
    headers: KeptHeaders,
    identity: Arc<ClientIdentity>,
}

/// The headers an identity was built from, as an [`Entry`] keeps them.
struct KeptHeaders {
    /// The `x-forwarded-for` lines, each followed by `\n` (which no header value holds);
    /// `None` when they were not read.
    forwarded: Option<Box<[u8]>>,
    agent: Option<Option<Box<[u8]>>>,
}

thread_local! {
    static RECENT: RefCell<Box<[Option<Entry>]>> =
        RefCell::new((0..SLOTS).map(|_| None).collect());
}

impl Inputs<'_> {
    fn slot(&self, device: u64) -> usize {
        let mut h = device ^ user_agent::hash(&octets(self.peer));
        if let Some(headers) = self.forwarded {
            for line in headers.get_all(&X_FORWARDED_FOR) {
                h = h.rotate_left(7) ^ user_agent::hash(line.as_bytes());
            }
        }
        if let Some(Some(agent)) = self.agent {
            h = h.rotate_left(11) ^ user_agent::hash(agent);
        }
        (h % SLOTS as u64) as usize
    }

    fn matches(&self, device: u64, entry: &Entry) -> bool {
        entry.device == device
            && entry.peer == self.peer
            && match (&self.agent, &entry.headers.agent) {
                (None, None) => true,
                (Some(a), Some(b)) => a.as_deref() == b.as_deref(),
                _ => false,
            }
            && match (self.forwarded, &entry.headers.forwarded) {
                (None, None) => true,
                (Some(headers), Some(kept)) => same_lines(headers, kept),
                _ => false,
            }
    }

    /// The headers as kept in an entry, or `None` when they are too long to keep.
    fn kept(&self) -> Option<KeptHeaders> {
        let lines = || {
            self.forwarded
                .into_iter()
                .flat_map(|h| h.get_all(&X_FORWARDED_FOR))
        };
        let forwarded_bytes: usize = lines().map(|line| line.len() + 1).sum();
        let agent_bytes = self.agent.flatten().map_or(0, <[u8]>::len);
        if forwarded_bytes + agent_bytes > MAX_KEY_BYTES {
            return None;
        }
        let forwarded = self.forwarded.map(|_| {
            let mut joined = Vec::with_capacity(forwarded_bytes);
            for line in lines() {
                joined.extend_from_slice(line.as_bytes());
                joined.push(b'\n');
            }
            joined.into_boxed_slice()
        });
        Some(KeptHeaders {
            forwarded,
            agent: self.agent.map(|a| a.map(Box::from)),
        })
    }
}

/// The identity for `inputs` under `device`: a kept one, or the one `build` makes (then kept).
pub(crate) fn identity(
    device: u64,
    inputs: &Inputs<'_>,
    build: impl FnOnce() -> ClientIdentity,
) -> Arc<ClientIdentity> {
    let slot = inputs.slot(device);
    let kept = RECENT.try_with(|recent| {
        let recent = recent.borrow();
        match &recent[slot] {
            Some(entry) if inputs.matches(device, entry) => Some(entry.identity.clone()),
            _ => None,
        }
    });
    if let Ok(Some(identity)) = kept {
        return identity;
    }
    let identity = Arc::new(build());
    if let Some(headers) = inputs.kept() {
        let entry = Entry {
            device,
            peer: inputs.peer,
            headers,
            identity: identity.clone(),
        };
        // A thread being torn down keeps nothing.
        let _ = RECENT.try_with(|recent| recent.borrow_mut()[slot] = Some(entry));
    }
    identity
}

/// Whether `headers`' `x-forwarded-for` lines are `kept`'s, line for line.
fn same_lines(headers: &HeaderMap, kept: &[u8]) -> bool {
    let mut rest = kept;
    for line in headers.get_all(&X_FORWARDED_FOR) {
        match rest
            .strip_prefix(line.as_bytes())
            .and_then(|r| r.strip_prefix(b"\n"))
        {
            Some(after) => rest = after,
            None => return false,
        }
    }
    rest.is_empty()
}

fn octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn client(ip: &str) -> ClientIdentity {
        ClientIdentity {
            ip: ip.parse().unwrap(),
            proxy_chain: Vec::new(),
            country: None,
            city: None,
            asn: None,
            user_agent: None,
        }
    }

    fn headers(lines: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(&X_FORWARDED_FOR, HeaderValue::from_static(line));
        }
        headers
    }

    /// Looks `inputs` up, building (and counting) a fresh identity on a miss.
    fn lookup(device: u64, inputs: &Inputs<'_>, built: &mut u32) -> Arc<ClientIdentity> {
        identity(device, inputs, || {
            *built += 1;
            client("192.0.2.1")
        })
    }

    #[test]
    fn equal_inputs_share_an_identity_and_any_difference_builds_anew() {
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let (one, two, split) = (
            headers(&["198.51.100.7"]),
            headers(&["198.51.100.8"]),
            headers(&["198.51", ".100.7"]),
        );
        let mut built = 0;
        let base = Inputs {
            peer,
            forwarded: Some(&one),
            agent: Some(Some(b"curl/8")),
        };
        let first = lookup(1, &base, &mut built);
        let again = lookup(1, &base, &mut built);
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(built, 1);

        let variants = [
            (2, base),
            (
                1,
                Inputs {
                    peer: "10.0.0.2".parse().unwrap(),
                    ..base
                },
            ),
            (
                1,
                Inputs {
                    forwarded: Some(&two),
                    ..base
                },
            ),
            (
                1,
                Inputs {
                    forwarded: Some(&split),
                    ..base
                },
            ),
            (
                1,
                Inputs {
                    forwarded: None,
                    ..base
                },
            ),
            (
                1,
                Inputs {
                    agent: Some(Some(b"curl/9")),
                    ..base
                },
            ),
            (
                1,
                Inputs {
                    agent: Some(None),
                    ..base
                },
            ),
            (
                1,
                Inputs {
                    agent: None,
                    ..base
                },
            ),
        ];
        for (device, inputs) in &variants {
            let before = built;
            let other = lookup(*device, inputs, &mut built);
            assert_eq!(built, before + 1, "a difference is a miss");
            assert!(!Arc::ptr_eq(&first, &other));
            // And it is kept in turn.
            lookup(*device, inputs, &mut built);
            assert_eq!(built, before + 1);
        }
    }

    #[test]
    fn long_inputs_are_not_kept() {
        let long: &'static str = "198.51.100.7, ".repeat(80).leak();
        let forwarded = headers(&[long]);
        let inputs = Inputs {
            peer: "10.0.0.1".parse().unwrap(),
            forwarded: Some(&forwarded),
            agent: None,
        };
        let mut built = 0;
        lookup(7, &inputs, &mut built);
        lookup(7, &inputs, &mut built);
        assert_eq!(built, 2);
    }
}
