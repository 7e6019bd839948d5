//! The Prometheus text format (0.0.4) from `prometheus-client`'s OpenMetrics encoding, for
//! scrapers that do not ask for OpenMetrics (`curl`, `promtool check metrics`, older agents).
//!
//! The two formats differ in what matters here only in naming: an OpenMetrics counter family
//! `x` (`# TYPE x counter`) has samples `x_total`, while the text format names the family after
//! its samples (`# TYPE x_total counter`); `info` families become gauges named `x_info`; the
//! `# UNIT` and `# EOF` lines do not exist in the text format.

/// The content type of the text format.
pub(crate) const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The content type of OpenMetrics (what `prometheus-client` encodes).
pub(crate) const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Rewrites an OpenMetrics exposition into the Prometheus text format.
pub(crate) fn to_text_format(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // A family's HELP line waits for its TYPE line, which may rename the family.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, help.take(), None);
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (suffix, kind) = match kind {
                "counter" => ("_total", "counter"),
                "info" => ("_info", "gauge"),
                "gauge" | "histogram" | "summary" => ("", kind),
                _ => ("", "untyped"),
            };
            let renamed = format!("{name}{suffix}");
            flush_help(&mut out, help.take(), Some(&renamed));
            out.push_str("# TYPE ");
            out.push_str(&renamed);
            out.push(' ');
            out.push_str(kind);
            out.push('\n');
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        } else {
            flush_help(&mut out, help.take(), None);
            out.push_str(line);
            out.push('\n');
        }
    }
    flush_help(&mut out, help, None);
    out
}

/// Writes a held HELP line, under the family's new name if it has one.
fn flush_help(out: &mut String, help: Option<(&str, &str)>, renamed: Option<&str>) {
    if let Some((name, text)) = help {
        out.push_str("# HELP ");
        out.push_str(renamed.unwrap_or(name));
        out.push(' ');
        out.push_str(text);
        out.push('\n');
    }
}

/// Whether a scraper's `Accept` header asks for OpenMetrics (Prometheus does).
pub(crate) fn wants_openmetrics(accept: Option<&[u8]>) -> bool {
    accept.is_some_and(|a| {
        a.windows(b"application/openmetrics-text".len())
            .any(|w| w.eq_ignore_ascii_case(b"application/openmetrics-text"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_infos_are_renamed_and_openmetrics_only_lines_dropped() {
        let om = "# HELP a_seconds Time.\n# TYPE a_seconds gauge\n# UNIT a_seconds seconds\n\
                  a_seconds 1.5\n# HELP r Reloads.\n# TYPE r counter\nr_total{result=\"ok\"} 2\n\
                  # HELP b Build.\n# TYPE b info\nb_info{v=\"1\"} 1\n\
                  # HELP h Latency.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.1\n\
                  h_count 1\n# EOF\n";
        assert_eq!(
            to_text_format(om),
            "# HELP a_seconds Time.\n# TYPE a_seconds gauge\na_seconds 1.5\n\
             # HELP r_total Reloads.\n# TYPE r_total counter\nr_total{result=\"ok\"} 2\n\
             # HELP b_info Build.\n# TYPE b_info gauge\nb_info{v=\"1\"} 1\n\
             # HELP h Latency.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.1\n\
             h_count 1\n"
        );
    }

    #[test]
    fn openmetrics_is_served_only_when_asked_for() {
        let prometheus =
            b"application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(!wants_openmetrics(Some(b"text/plain")));
        assert!(!wants_openmetrics(Some(b"*/*")));
        assert!(!wants_openmetrics(None));
    }
}
