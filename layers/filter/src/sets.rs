//! Lookup sets built once, at construction, so that checking a request allocates nothing.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

use http::{HeaderName, Method};

/// The methods named by RFC 9110 (§9) plus PATCH (RFC 5789), in the order an `Allow` header
/// lists them when no allow list narrows them.
pub(crate) const STANDARD_METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::CONNECT,
    Method::OPTIONS,
    Method::TRACE,
    Method::PATCH,
];

/// A set of methods: a bitset over [`STANDARD_METHODS`] and a short list of extension methods
/// (`PURGE`, WebDAV's, …), which are rare.
#[derive(Clone, Debug, Default)]
pub(crate) struct MethodSet {
    standard: u16,
    extensions: Box<[Method]>,
}

// === impl MethodSet ===

impl MethodSet {
    pub(crate) fn new<'a>(methods: impl IntoIterator<Item = &'a Method>) -> Self {
        let mut standard = 0;
        let mut extensions = Vec::new();
        for method in methods {
            match standard_bit(method) {
                Some(bit) => standard |= bit,
                None if !extensions.contains(method) => extensions.push(method.clone()),
                None => {}
            }
        }
        Self {
            standard,
            extensions: extensions.into_boxed_slice(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.standard == 0 && self.extensions.is_empty()
    }

    #[inline]
    pub(crate) fn contains(&self, method: &Method) -> bool {
        match standard_bit(method) {
            Some(bit) => self.standard & bit != 0,
            None => self.extensions.contains(method),
        }
    }
}

#[inline]
fn standard_bit(method: &Method) -> Option<u16> {
    // Comparing two standard methods compares enum tags: no string is looked at.
    STANDARD_METHODS
        .iter()
        .position(|m| m == method)
        .map(|i| 1 << i)
}

/// The method rule: which methods pass, with deny winning over allow, folded into one bitset for
/// the standard methods; extension methods are looked up in short lists.
#[derive(Clone, Debug)]
pub(crate) struct MethodRule {
    /// The standard methods that pass, as bits over [`STANDARD_METHODS`].
    standard: u16,
    /// Extension methods pass unless denied (there is no allow list).
    any_extension: bool,
    /// The extension methods that pass (with an allow list), denied ones removed.
    allow_extensions: Box<[Method]>,
    /// The extension methods that are denied.
    deny_extensions: Box<[Method]>,
}

// === impl MethodRule ===

impl MethodRule {
    pub(crate) fn new(allow: &[Method], deny: &[Method]) -> Self {
        let allow_set = MethodSet::new(allow);
        let deny_set = MethodSet::new(deny);
        let any_extension = allow_set.is_empty();
        let allowed = if any_extension {
            (1 << STANDARD_METHODS.len()) - 1
        } else {
            allow_set.standard
        };
        let allow_extensions = allow_set
            .extensions
            .iter()
            .filter(|m| !deny_set.contains(m))
            .cloned()
            .collect();
        Self {
            standard: allowed & !deny_set.standard,
            any_extension,
            allow_extensions,
            deny_extensions: deny_set.extensions,
        }
    }

    /// Whether `method` passes.
    #[inline]
    pub(crate) fn permits(&self, method: &Method) -> bool {
        match standard_bit(method) {
            Some(bit) => self.standard & bit != 0,
            None if self.any_extension => !self.deny_extensions.contains(method),
            None => self.allow_extensions.contains(method),
        }
    }

    /// The methods that pass, for the `Allow` header: the allow list in its order (duplicates
    /// and denied methods removed), or without an allow list the standard methods that are not
    /// denied (extension methods cannot be enumerated, so they are not listed).
    pub(crate) fn allowed(&self, allow: &[Method]) -> Vec<Method> {
        let mut listed: Vec<Method> = Vec::new();
        let candidates: &[Method] = if self.any_extension {
            &STANDARD_METHODS
        } else {
            allow
        };
        for method in candidates {
            if self.permits(method) && !listed.contains(method) {
                listed.push(method.clone());
            }
        }
        listed
    }
}

/// A set of header names. Sets as short as the usual deny lists are scanned (comparing a
/// standard name is comparing a tag); longer ones are hashed with [`FxHasher`].
#[derive(Clone, Debug)]
pub(crate) enum NameSet {
    Scan(Box<[HeaderName]>),
    Hash(HashSet<HeaderName, BuildHasherDefault<FxHasher>>),
}

/// Up to this many names, a [`NameSet`] is scanned.
const SCAN_MAX: usize = 4;

/// The Fx hash (rustc's): a multiply and a rotate per word, several times faster than the
/// default SipHash on names this short.
///
/// It is not keyed, which is safe here: the sets are built once from configuration and never
/// grow, so a client choosing header names can only probe them, never lengthen their chains.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FxHasher {
    hash: u64,
}

// === impl FxHasher ===

impl FxHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

// === impl NameSet ===

impl NameSet {
    pub(crate) fn new(names: impl IntoIterator<Item = HeaderName>) -> Self {
        let mut unique: Vec<HeaderName> = Vec::new();
        for name in names {
            if !unique.contains(&name) {
                unique.push(name);
            }
        }
        if unique.len() <= SCAN_MAX {
            Self::Scan(unique.into_boxed_slice())
        } else {
            Self::Hash(unique.into_iter().collect())
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Self::Scan(names) => names.is_empty(),
            Self::Hash(names) => names.is_empty(),
        }
    }

    #[inline]
    pub(crate) fn contains(&self, name: &HeaderName) -> bool {
        match self {
            Self::Scan(names) => names.contains(name),
            Self::Hash(names) => names.contains(name),
        }
    }
}

impl Default for NameSet {
    fn default() -> Self {
        Self::Scan(Box::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_sets_hold_standard_and_extension_methods() {
        let purge = Method::from_bytes(b"PURGE").unwrap();
        let set = MethodSet::new(&[Method::GET, Method::TRACE, purge.clone(), purge.clone()]);
        assert!(set.contains(&Method::GET));
        assert!(set.contains(&Method::TRACE));
        assert!(set.contains(&purge));
        assert!(!set.contains(&Method::POST));
        assert!(!set.contains(&Method::from_bytes(b"PROPFIND").unwrap()));
        assert_eq!(set.extensions.len(), 1);
        assert!(MethodSet::default().is_empty());
        assert!(!MethodSet::default().contains(&Method::GET));
    }

    #[test]
    fn method_rules_let_deny_win() {
        let purge = Method::from_bytes(b"PURGE").unwrap();
        let ban = Method::from_bytes(b"BAN").unwrap();

        let open = MethodRule::new(&[], &[]);
        assert!(STANDARD_METHODS.iter().all(|m| open.permits(m)));
        assert!(open.permits(&purge));

        let deny_only = MethodRule::new(&[], &[Method::TRACE, ban.clone()]);
        assert!(!deny_only.permits(&Method::TRACE));
        assert!(!deny_only.permits(&ban));
        assert!(deny_only.permits(&purge));
        assert!(deny_only.permits(&Method::GET));
        let allowed: Vec<_> = deny_only
            .allowed(&[])
            .iter()
            .map(Method::to_string)
            .collect();
        assert_eq!(
            allowed,
            [
                "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "PATCH"
            ]
        );

        let allow = [
            Method::POST,
            Method::GET,
            purge.clone(),
            ban.clone(),
            Method::GET,
        ];
        let both = MethodRule::new(&allow, &[Method::POST, ban.clone()]);
        assert!(both.permits(&Method::GET));
        assert!(both.permits(&purge));
        assert!(!both.permits(&Method::POST));
        assert!(!both.permits(&ban));
        assert!(!both.permits(&Method::HEAD));
        let allowed: Vec<_> = both.allowed(&allow).iter().map(Method::to_string).collect();
        assert_eq!(allowed, ["GET", "PURGE"]);
    }

    #[test]
    fn name_sets_scan_short_lists_and_hash_long_ones() {
        let short = NameSet::new(["host", "x-a", "host"].map(HeaderName::from_static));
        assert!(short.contains(&HeaderName::from_static("host")));
        assert!(matches!(&short, NameSet::Scan(n) if n.len() == 2));
        assert!(short.contains(&HeaderName::from_static("x-a")));
        assert!(!short.contains(&HeaderName::from_static("x-b")));

        let long = NameSet::new((0..20).map(|i| HeaderName::try_from(format!("x-{i}")).unwrap()));
        assert!(matches!(long, NameSet::Hash(_)));
        assert!(long.contains(&HeaderName::from_static("x-7")));
        for i in 0..20 {
            assert!(long.contains(&HeaderName::try_from(format!("x-{i}")).unwrap()));
        }
        let standard =
            NameSet::new(["host", "accept", "cookie", "te", "x-a"].map(HeaderName::from_static));
        assert!(matches!(standard, NameSet::Hash(_)));
        assert!(standard.contains(&http::header::ACCEPT));
        assert!(standard.contains(&HeaderName::from_static("x-a")));
        assert!(!standard.contains(&http::header::USER_AGENT));
        assert!(!long.contains(&HeaderName::from_static("x-70")));
        assert!(NameSet::default().is_empty());
    }
}
