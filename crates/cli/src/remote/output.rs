//! How answers are shown: aligned tables with colour (on a terminal only)
//! and relative times for people; the API's own JSON for scripts.

use std::io::{IsTerminal, Write};

use chrono::{DateTime, Utc};
use clap::ValueEnum;
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// The API's JSON, unchanged (lists as arrays).
    Json,
    /// The same data as YAML.
    Yaml,
}

/// Colour when stdout is a terminal and `NO_COLOR` is unset.
pub fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The API's data as JSON (pretty) or YAML; a table format prints JSON.
pub fn print_data(format: Format, value: &Value) {
    match format {
        Format::Yaml => match serde_norway::to_string(value) {
            Ok(text) => print!("{text}"),
            Err(_) => println!("{value}"),
        },
        Format::Json | Format::Table => {
            let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
            println!("{text}");
        }
    }
}

/// A field as text: strings bare, null and missing as `-`.
pub fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "-".into(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// "3m ago" / "in 5s" for an RFC 3339 time; `-` for none.
pub fn relative(value: &Value) -> String {
    let Some(at) = value
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
    else {
        return text(value);
    };
    relative_to(at.with_timezone(&Utc), Utc::now())
}

fn relative_to(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - at).num_seconds();
    let n = secs.unsigned_abs();
    let amount = match n {
        0..60 => format!("{n}s"),
        60..3600 => format!("{}m", n / 60),
        3600..86_400 => format!("{}h", n / 3600),
        _ => format!("{}d", n / 86_400),
    };
    if secs >= 0 {
        format!("{amount} ago")
    } else {
        format!("in {amount}")
    }
}

/// The ANSI colour of a state or status word, if it has one.
fn tint(word: &str) -> Option<&'static str> {
    match word {
        "running" | "succeeded" | "connected" | "success" => Some("32"),
        "failed" | "crashed" | "disconnected" | "failure" | "denied" | "interrupted" => Some("31"),
        "queued" | "paused" | "suspended" | "connecting" | "cancelled" | "shutting_down"
        | "pmsuspended" | "blocked" => Some("33"),
        _ => None,
    }
}

/// Prints rows under headers, columns aligned; `status_col` is coloured
/// by its word when colour is on.
pub fn table(headers: &[&str], rows: &[Vec<String>], status_col: Option<usize>) {
    let colour = colour();
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{}", render(headers, rows, status_col, colour));
}

fn render(
    headers: &[&str],
    rows: &[Vec<String>],
    status_col: Option<usize>,
    colour: bool,
) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>, header: bool| {
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            // Pad before colouring: escapes have no width.
            let padded = if i == last {
                cell.clone()
            } else {
                format!("{cell:<width$}  ", width = widths[i])
            };
            let code = if !colour {
                None
            } else if header {
                Some("1")
            } else if Some(i) == status_col {
                tint(cell)
            } else {
                None
            };
            match code {
                Some(code) => out.push_str(&format!("\x1b[{code}m{padded}\x1b[0m")),
                None => out.push_str(&padded),
            }
        }
        out.push('\n');
    };
    line(headers.iter().map(|h| (*h).to_owned()).collect(), true);
    for row in rows {
        line(row.clone(), false);
    }
    out
}

/// The items of a JSON array (none for anything else).
pub fn items(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// A list answer: the API's JSON as it is, or a table of one row per item.
pub fn list(
    format: Format,
    value: &Value,
    headers: &[&str],
    status_col: Option<usize>,
    row: impl Fn(&Value) -> Vec<String>,
) {
    match format {
        Format::Json | Format::Yaml => print_data(format, value),
        Format::Table => {
            let rows: Vec<Vec<String>> = items(value).iter().map(row).collect();
            table(headers, &rows, status_col);
        }
    }
}

/// One object: the API's JSON as it is, or `label: value` lines.
pub fn object<'a>(
    format: Format,
    value: &'a Value,
    pairs: impl FnOnce(&'a Value) -> Vec<(&'a str, String)>,
) {
    match format {
        Format::Json | Format::Yaml => print_data(format, value),
        Format::Table => fields(&pairs(value)),
    }
}

/// `label: value` lines, labels aligned.
pub fn fields(pairs: &[(&str, String)]) {
    let width = pairs.iter().map(|(l, _)| l.len()).max().unwrap_or(0) + 1;
    for (label, value) in pairs {
        println!("{:<width$} {value}", format!("{label}:"));
    }
}

/// Bytes for people: `1.5 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_naturally() {
        let now = Utc::now();
        let ago = |secs| relative_to(now - chrono::Duration::seconds(secs), now);
        assert_eq!(ago(5), "5s ago");
        assert_eq!(ago(125), "2m ago");
        assert_eq!(ago(7200), "2h ago");
        assert_eq!(ago(3 * 86_400), "3d ago");
        assert_eq!(ago(-30), "in 30s");
        assert_eq!(relative(&Value::Null), "-");
    }

    #[test]
    fn tables_align_and_colour_only_when_asked() {
        let rows = vec![
            vec!["web-01".into(), "running".into(), "x".into()],
            vec!["db".into(), "shut_off".into(), "y".into()],
        ];
        let plain = render(&["NAME", "STATE", "HOST"], &rows, Some(1), false);
        assert_eq!(
            plain,
            "NAME    STATE     HOST\nweb-01  running   x\ndb      shut_off  y\n"
        );
        let coloured = render(&["NAME", "STATE", "HOST"], &rows, Some(1), true);
        assert!(
            coloured.contains("\x1b[32mrunning   \x1b[0m"),
            "{coloured:?}"
        );
    }

    #[test]
    fn sizes_for_people() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
