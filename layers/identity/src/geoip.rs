//! GeoIP lookups in a MaxMind-format (`.mmdb`) database.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use maxminddb::{MaxMindDbError, Reader};
use serde::Deserialize;

/// A MaxMind-format GeoIP database (GeoIP2 / GeoLite2 Country, City or ASN, or any database
/// with the same record layout), read into memory once and shared: clones are cheap and
/// every worker uses the same copy.
///
/// One lookup decodes what the database has of:
/// * `country.iso_code` (falling back to `registered_country.iso_code`): Country and City
///   databases;
/// * `city.names.en`: City databases;
/// * `autonomous_system_number`: ASN (and ISP) databases.
#[derive(Clone)]
pub struct GeoIp {
    inner: Arc<Inner>,
}

struct Inner {
    reader: Reader<Vec<u8>>,
    path: Option<PathBuf>,
}

/// What a GeoIP lookup found about an address. Every field is `None` when the database does
/// not have it (or has no entry for the address).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GeoRecord {
    /// ISO 3166-1 alpha-2 country code, e.g. `"SE"`.
    pub country: Option<String>,
    /// The city's English name.
    pub city: Option<String>,
    /// The autonomous system number.
    pub asn: Option<u32>,
}

/// Why a GeoIP database could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open GeoIP database {}: {source}", path.display())]
pub struct GeoIpError {
    path: PathBuf,
    #[source]
    source: MaxMindDbError,
}

// === impl GeoIpError ===

impl GeoIpError {
    /// The database's path (empty for a database given as bytes).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The parts of a record Snakeway reads, borrowed from the database (no allocation to
/// decode; unknown keys are skipped).
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    country: Option<Country<'a>>,
    #[serde(borrow)]
    registered_country: Option<Country<'a>>,
    #[serde(borrow)]
    city: Option<City<'a>>,
    autonomous_system_number: Option<u32>,
}

#[derive(Deserialize)]
struct Country<'a> {
    #[serde(borrow)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct City<'a> {
    #[serde(borrow)]
    names: Option<Names<'a>>,
}

#[derive(Deserialize)]
struct Names<'a> {
    #[serde(borrow)]
    en: Option<&'a str>,
}

// === impl GeoIp ===

impl GeoIp {
    /// Reads the database at `path` into memory and checks its metadata.
    pub fn open(path: &Path) -> Result<GeoIp, GeoIpError> {
        let reader = Reader::open_readfile(path).map_err(|source| GeoIpError {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::from_reader(reader, Some(path.to_owned())))
    }

    /// A database from its bytes (e.g. embedded, or built by a test).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GeoIp, GeoIpError> {
        let reader = Reader::from_source(bytes).map_err(|source| GeoIpError {
            path: PathBuf::new(),
            source,
        })?;
        Ok(Self::from_reader(reader, None))
    }

    fn from_reader(reader: Reader<Vec<u8>>, path: Option<PathBuf>) -> Self {
        Self {
            inner: Arc::new(Inner { reader, path }),
        }
    }

    /// The database type from its metadata, e.g. `"GeoLite2-City"`.
    pub fn database_type(&self) -> &str {
        &self.inner.reader.metadata().database_type
    }

    /// Looks `ip` up. An address the database has no entry for, an IPv6 address in an
    /// IPv4-only database, or a record that fails to decode all give an empty record: a
    /// lookup never fails a request.
    pub fn lookup(&self, ip: IpAddr) -> GeoRecord {
        let ip = ip.to_canonical();
        let Ok(found) = self.inner.reader.lookup(ip) else {
            return GeoRecord::default();
        };
        let Ok(Some(record)) = found.decode::<Record<'_>>() else {
            return GeoRecord::default();
        };
        let country = record
            .country
            .and_then(|c| c.iso_code)
            .or_else(|| record.registered_country.and_then(|c| c.iso_code));
        GeoRecord {
            country: country.map(str::to_owned),
            city: record
                .city
                .and_then(|c| c.names)
                .and_then(|n| n.en)
                .map(str::to_owned),
            asn: record.autonomous_system_number,
        }
    }
}

impl fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeoIp")
            .field("path", &self.inner.path)
            .field("database_type", &self.database_type())
            .finish()
    }
}
