//! A minimal MaxMind DB (`.mmdb`) writer for tests and benchmarks.
//!
//! Format (MaxMind DB spec 2.0): a binary search tree of `node_count` nodes, each two
//! 24-bit big-endian records (left = bit 0, right = bit 1); a record below `node_count`
//! points at a node, `node_count` means "no data", above it points into the data section at
//! `record - node_count - 16`. Then 16 zero bytes, the data section, the marker
//! `\xAB\xCD\xEFMaxMind.com` and the metadata map.

#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::net::IpAddr;

/// A value in the data section.
#[derive(Clone, Debug)]
pub enum Value {
    Str(String),
    U16(u16),
    U32(u32),
    U64(u64),
    Map(Vec<(String, Value)>),
    Array(Vec<Value>),
}

impl Value {
    /// A map from `(key, value)` pairs.
    pub fn map<const N: usize>(pairs: [(&str, Value); N]) -> Self {
        Self::Map(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    /// A string.
    pub fn str(s: &str) -> Self {
        Self::Str(s.to_owned())
    }
}

// Type numbers from the spec.
const STRING: u8 = 2;
const UINT16: u8 = 5;
const UINT32: u8 = 6;
const MAP: u8 = 7;
const UINT64: u8 = 9;
const ARRAY: u8 = 11;

fn control(out: &mut Vec<u8>, kind: u8, size: usize) {
    let (size_bits, extra): (u8, Vec<u8>) = match size {
        0..29 => (size as u8, vec![]),
        29..285 => (29, vec![(size - 29) as u8]),
        285..65821 => (30, ((size - 285) as u16).to_be_bytes().to_vec()),
        _ => (31, ((size - 65821) as u32).to_be_bytes()[1..].to_vec()),
    };
    if kind <= 7 {
        out.push(kind << 5 | size_bits);
    } else {
        // Extended type: type bits 0, the next byte holds `kind - 7`.
        out.push(size_bits);
        out.push(kind - 7);
    }
    out.extend_from_slice(&extra);
}

fn uint(out: &mut Vec<u8>, kind: u8, value: u64, width: usize) {
    let bytes = value.to_be_bytes();
    let bytes = &bytes[8 - width..];
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    control(out, kind, bytes.len() - skip);
    out.extend_from_slice(&bytes[skip..]);
}

/// Appends `value`'s encoding to `out`.
pub fn encode(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Str(s) => {
            control(out, STRING, s.len());
            out.extend_from_slice(s.as_bytes());
        }
        Value::U16(v) => uint(out, UINT16, u64::from(*v), 2),
        Value::U32(v) => uint(out, UINT32, u64::from(*v), 4),
        Value::U64(v) => uint(out, UINT64, *v, 8),
        Value::Map(pairs) => {
            control(out, MAP, pairs.len());
            for (k, v) in pairs {
                encode(out, &Value::Str(k.clone()));
                encode(out, v);
            }
        }
        Value::Array(items) => {
            control(out, ARRAY, items.len());
            for item in items {
                encode(out, item);
            }
        }
    }
}

enum Node {
    Empty,
    Data(usize),
    Inner(Box<Node>, Box<Node>),
}

/// Builds a database: insert networks with their records, then [`Writer::build`].
pub struct Writer {
    ip_version: u16,
    database_type: String,
    root: Node,
    data: Vec<u8>,
}

impl Writer {
    /// An IPv6 database (IPv4 networks live under `::/96`, as in MaxMind's own databases).
    pub fn new(database_type: &str) -> Self {
        Self::with_ip_version(database_type, 6)
    }

    /// A database for `ip_version` 4 or 6.
    pub fn with_ip_version(database_type: &str, ip_version: u16) -> Self {
        Self {
            ip_version,
            database_type: database_type.to_owned(),
            root: Node::Empty,
            data: Vec::new(),
        }
    }

    /// Maps the network `cidr` (e.g. `"81.2.69.0/24"`) to `record`.
    pub fn insert(&mut self, cidr: &str, record: &Value) -> &mut Self {
        let (addr, len) = cidr.split_once('/').expect("a CIDR");
        let addr: IpAddr = addr.parse().expect("an address");
        let len: u32 = len.parse().expect("a prefix length");
        // The address as the tree walks it: from the most significant bit of `bits`.
        let (bits, len) = match (addr, self.ip_version) {
            (IpAddr::V4(v4), 4) => (u128::from(u32::from(v4)) << 96, len),
            (IpAddr::V4(v4), _) => (u128::from(u32::from(v4)), len + 96),
            (IpAddr::V6(v6), 6) => (u128::from(v6), len),
            (IpAddr::V6(_), _) => panic!("IPv6 network in an IPv4 database"),
        };
        let offset = self.data.len();
        encode(&mut self.data, record);

        let mut node = &mut self.root;
        for i in 0..len {
            if !matches!(node, Node::Inner(..)) {
                *node = Node::Inner(Box::new(Node::Empty), Box::new(Node::Empty));
            }
            let Node::Inner(left, right) = node else {
                unreachable!()
            };
            let bit = (bits >> (127 - i)) & 1;
            node = if bit == 0 { left } else { right };
        }
        *node = Node::Data(offset);
        self
    }

    /// The database file's bytes.
    pub fn build(&self) -> Vec<u8> {
        // Number the inner nodes breadth-first; the root is node 0.
        let mut order: Vec<&Node> = Vec::new();
        let mut queue = VecDeque::new();
        // A database needs at least one node: an empty root gets an empty inner node below.
        if matches!(self.root, Node::Inner(..)) {
            queue.push_back(&self.root);
        }
        while let Some(node) = queue.pop_front() {
            order.push(node);
            if let Node::Inner(l, r) = node {
                for child in [l, r] {
                    if matches!(**child, Node::Inner(..)) {
                        queue.push_back(child);
                    }
                }
            }
        }
        let empty_root = Node::Inner(Box::new(Node::Empty), Box::new(Node::Empty));
        if order.is_empty() {
            order.push(&empty_root);
        }
        let node_count = order.len();
        // Inner nodes get consecutive numbers in queue order: track them by address.
        let index_of = |target: &Node| {
            order
                .iter()
                .position(|n| std::ptr::eq(*n, target))
                .expect("a numbered node")
        };
        let record = |child: &Node| -> u32 {
            let value = match child {
                Node::Empty => node_count,
                Node::Data(offset) => node_count + 16 + offset,
                Node::Inner(..) => index_of(child),
            };
            assert!(value < 1 << 24, "record overflows 24 bits");
            value as u32
        };

        let mut out = Vec::new();
        for node in &order {
            let Node::Inner(l, r) = node else {
                unreachable!()
            };
            out.extend_from_slice(&record(l).to_be_bytes()[1..]);
            out.extend_from_slice(&record(r).to_be_bytes()[1..]);
        }
        out.extend_from_slice(&[0; 16]);
        out.extend_from_slice(&self.data);
        out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
        let metadata = Value::map([
            ("node_count", Value::U32(node_count as u32)),
            ("record_size", Value::U16(24)),
            ("ip_version", Value::U16(self.ip_version)),
            ("database_type", Value::str(&self.database_type)),
            ("languages", Value::Array(vec![Value::str("en")])),
            ("binary_format_major_version", Value::U16(2)),
            ("binary_format_minor_version", Value::U16(0)),
            ("build_epoch", Value::U64(1_700_000_000)),
            (
                "description",
                Value::map([("en", Value::str("Snakeway test database"))]),
            ),
        ]);
        encode(&mut out, &metadata);
        out
    }
}
