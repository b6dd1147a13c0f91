//! Human output: aligned tables, relative times, sizes; and the `--json`
//! switch every API command has.

use std::io::Write;

use chrono::{DateTime, Utc};

/// `--json`: print the API's JSON instead of a table.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct JsonFlag {
    /// Print the API's JSON (one document) instead of human output.
    #[arg(long)]
    pub json: bool,
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// A table with a header row; columns are padded to their widest cell.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Renders it (the last column is not padded, so long metadata or
    /// descriptions do not leave trailing spaces).
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    let pad = widths[i] - cell.chars().count() + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// Prints it on stdout.
    pub fn print(&self) {
        print!("{}", self.render());
    }
}

/// A short duration: `45s`, `3m`, `2h`, `5d`.
pub fn short_duration(seconds: i64) -> String {
    let s = seconds.abs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// `2m ago`, `in 4m`, `just now`, relative to `now`.
pub fn relative_to(time: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let seconds = (now - time).num_seconds();
    if seconds.abs() < 2 {
        "just now".into()
    } else if seconds > 0 {
        format!("{} ago", short_duration(seconds))
    } else {
        format!("in {}", short_duration(seconds))
    }
}

/// [`relative_to`] now.
pub fn relative(time: DateTime<Utc>) -> String {
    relative_to(time, Utc::now())
}

/// An optional time, relative, or `-`.
pub fn relative_opt(time: Option<DateTime<Utc>>) -> String {
    time.map_or_else(|| "-".into(), relative)
}

/// `512 MiB`-style memory.
pub fn mib(value: u32) -> String {
    if value >= 1024 && value.is_multiple_of(1024) {
        format!("{} GiB", value / 1024)
    } else {
        format!("{value} MiB")
    }
}

/// A byte count for people: `512 B`, `3.0 KiB`, `123.4 MiB`, `2.1 GiB`.
pub fn bytes(value: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if value < 1024 {
        return format!("{value} B");
    }
    let mut scaled = value as f64 / 1024.0;
    let mut unit = 0;
    while scaled >= 1024.0 && unit + 1 < UNITS.len() {
        scaled /= 1024.0;
        unit += 1;
    }
    format!("{scaled:.1} {}", UNITS[unit])
}

/// `k=v,k2=v2`, or `-`.
pub fn pairs(map: &std::collections::BTreeMap<String, String>) -> String {
    if map.is_empty() {
        return "-".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let mut table = Table::new(&["ID", "STATE", "NOTE"]);
        table.row(vec!["sb-a".into(), "running".into(), "x".into()]);
        table.row(vec!["sb-long-id".into(), "-".into(), "".into()]);
        assert_eq!(
            table.render(),
            "ID          STATE    NOTE\nsb-a        running  x\nsb-long-id  -\n"
        );
    }

    #[test]
    fn relative_times_read_naturally() {
        let now = Utc::now();
        let at = |s: i64| now - chrono::Duration::seconds(s);
        assert_eq!(relative_to(at(0), now), "just now");
        assert_eq!(relative_to(at(42), now), "42s ago");
        assert_eq!(relative_to(at(150), now), "2m ago");
        assert_eq!(relative_to(at(7200), now), "2h ago");
        assert_eq!(relative_to(at(3 * 86_400), now), "3d ago");
        assert_eq!(relative_to(at(-300), now), "in 5m");
    }

    #[test]
    fn sizes() {
        assert_eq!(mib(512), "512 MiB");
        assert_eq!(mib(2048), "2 GiB");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024), "3.0 KiB");
        assert_eq!(bytes(129_394_278), "123.4 MiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
    }
}
