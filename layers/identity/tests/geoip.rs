//! GeoIP lookups against small databases built by the test itself.

mod support;

use std::net::IpAddr;

use snakeway_identity::{GeoIp, GeoRecord};
use support::mmdb::{Value, Writer};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn city_record(iso: &str, city: &str) -> Value {
    Value::map([
        (
            "city",
            Value::map([(
                "names",
                Value::map([("de", Value::str("Stadt")), ("en", Value::str(city))]),
            )]),
        ),
        (
            "continent",
            Value::map([
                ("code", Value::str("EU")),
                ("geoname_id", Value::U32(6255148)),
            ]),
        ),
        (
            "country",
            Value::map([
                ("geoname_id", Value::U32(2635167)),
                ("iso_code", Value::str(iso)),
                ("names", Value::map([("en", Value::str("Somewhere"))])),
            ]),
        ),
        (
            "subdivisions",
            Value::Array(vec![Value::map([("iso_code", Value::str("ENG"))])]),
        ),
    ])
}

fn city_db() -> Vec<u8> {
    let mut w = Writer::new("GeoIP2-City");
    w.insert("81.2.69.0/24", &city_record("GB", "London"))
        .insert("89.160.20.112/28", &city_record("SE", "Linköping"))
        .insert("2001:db8:1::/48", &city_record("DE", "Berlin"))
        .insert(
            "198.51.100.0/24",
            // Only a registered country (as for anycast networks).
            &Value::map([(
                "registered_country",
                Value::map([("iso_code", Value::str("US"))]),
            )]),
        );
    w.build()
}

#[test]
fn the_writer_makes_a_valid_database() {
    let reader = maxminddb::Reader::from_source(city_db()).expect("loads");
    reader.verify().expect("verifies");
    assert_eq!(reader.metadata().database_type, "GeoIP2-City");
    let city: maxminddb::geoip2::City<'_> = reader
        .lookup(ip("81.2.69.160"))
        .unwrap()
        .decode()
        .unwrap()
        .expect("a record");
    assert_eq!(city.country.iso_code, Some("GB"));
    assert_eq!(city.city.names.english, Some("London"));
}

#[test]
fn city_database() {
    let db = GeoIp::from_bytes(city_db()).unwrap();
    assert_eq!(db.database_type(), "GeoIP2-City");
    assert_eq!(
        db.lookup(ip("81.2.69.160")),
        GeoRecord {
            country: Some("GB".into()),
            city: Some("London".into()),
            asn: None,
        }
    );
    let se = db.lookup(ip("89.160.20.127"));
    assert_eq!(se.country.as_deref(), Some("SE"));
    assert_eq!(se.city.as_deref(), Some("Linköping"));
    // Just outside the /28.
    assert_eq!(db.lookup(ip("89.160.20.128")), GeoRecord::default());
    // IPv6, and IPv4-mapped IPv6.
    assert_eq!(
        db.lookup(ip("2001:db8:1::42")).city.as_deref(),
        Some("Berlin")
    );
    assert_eq!(
        db.lookup(ip("::ffff:81.2.69.1")).country.as_deref(),
        Some("GB")
    );
    // Falls back to the registered country.
    assert_eq!(db.lookup(ip("198.51.100.1")).country.as_deref(), Some("US"));
    // No entry.
    assert_eq!(db.lookup(ip("10.0.0.1")), GeoRecord::default());
    assert_eq!(db.lookup(ip("2001:db8:2::1")), GeoRecord::default());
}

#[test]
fn country_database() {
    let mut w = Writer::new("GeoLite2-Country");
    w.insert(
        "81.2.69.0/24",
        &Value::map([(
            "country",
            Value::map([
                ("iso_code", Value::str("GB")),
                ("is_in_european_union", Value::U16(0)),
            ]),
        )]),
    );
    let db = GeoIp::from_bytes(w.build()).unwrap();
    assert_eq!(
        db.lookup(ip("81.2.69.1")),
        GeoRecord {
            country: Some("GB".into()),
            city: None,
            asn: None,
        }
    );
}

#[test]
fn asn_database() {
    let mut w = Writer::new("GeoLite2-ASN");
    w.insert(
        "1.128.0.0/11",
        &Value::map([
            ("autonomous_system_number", Value::U32(1221)),
            (
                "autonomous_system_organization",
                Value::str("Telstra Pty Ltd"),
            ),
        ]),
    )
    .insert(
        "2600:6000::/20",
        &Value::map([("autonomous_system_number", Value::U32(237))]),
    );
    let db = GeoIp::from_bytes(w.build()).unwrap();
    assert_eq!(
        db.lookup(ip("1.128.0.1")),
        GeoRecord {
            country: None,
            city: None,
            asn: Some(1221),
        }
    );
    assert_eq!(db.lookup(ip("2600:6000::1")).asn, Some(237));
    assert_eq!(db.lookup(ip("1.0.0.1")).asn, None);
}

#[test]
fn ipv4_only_database() {
    let mut w = Writer::with_ip_version("Test-IPv4", 4);
    w.insert("192.0.2.0/24", &city_record("NL", "Amsterdam"));
    let db = GeoIp::from_bytes(w.build()).unwrap();
    assert_eq!(
        db.lookup(ip("192.0.2.77")).city.as_deref(),
        Some("Amsterdam")
    );
    // IPv6 in an IPv4-only database: no data, no failure.
    assert_eq!(db.lookup(ip("2001:db8::1")), GeoRecord::default());
}

#[test]
fn open_reads_a_file_and_reports_bad_ones() {
    let dir = std::env::temp_dir().join(format!("snakeway-identity-geoip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let good = dir.join("city.mmdb");
    std::fs::write(&good, city_db()).unwrap();
    let db = GeoIp::open(&good).unwrap();
    assert_eq!(db.lookup(ip("81.2.69.1")).country.as_deref(), Some("GB"));
    // Clones share the database.
    let clone = db.clone();
    assert_eq!(
        clone.lookup(ip("81.2.69.1")).city.as_deref(),
        Some("London")
    );
    assert!(format!("{db:?}").contains("GeoIP2-City"));

    let missing = dir.join("missing.mmdb");
    let err = GeoIp::open(&missing).unwrap_err();
    assert_eq!(err.path(), missing);
    assert!(err.to_string().contains("missing.mmdb"), "{err}");

    let garbage = dir.join("garbage.mmdb");
    std::fs::write(&garbage, b"this is not a database").unwrap();
    let err = GeoIp::open(&garbage).unwrap_err();
    assert!(err.to_string().contains("garbage.mmdb"), "{err}");

    std::fs::remove_dir_all(&dir).unwrap();
}
