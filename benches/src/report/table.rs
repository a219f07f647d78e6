//! CSV out (RFC 4180 quoting) and back in (for [`super::check`]), and markdown tables.

use std::fmt::Write as _;

/// A table: a header and rows of the header's width.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    /// Column names.
    pub header: Vec<String>,
    /// Rows, each as wide as the header.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these columns.
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; panics if its width is not the header's (a programming error).
    pub fn push(&mut self, row: Vec<String>) {
        assert_eq!(
            row.len(),
            self.header.len(),
            "row width of {:?}",
            self.header
        );
        self.rows.push(row);
    }

    /// The table as CSV.
    pub fn to_csv(&self) -> String {
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let fields: Vec<String> = row.iter().map(|f| quote(f)).collect();
            out.push_str(&fields.join(","));
            out.push('\n');
        }
        out
    }

    /// The table as markdown; columns holding only numbers (with a unit suffix such as `×`
    /// or `%`, or `-` for none) are right-aligned.
    pub fn to_markdown(&self) -> String {
        let mut out = format!("| {} |\n|", self.header.join(" | "));
        for c in 0..self.header.len() {
            let numeric = self.rows.iter().all(|r| is_number(&r[c]));
            out.push_str(if numeric && !self.rows.is_empty() {
                "---:|"
            } else {
                "---|"
            });
        }
        out.push('\n');
        for row in &self.rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        out
    }
}

/// Whether a cell reads as a number: `-`, or a float with an optional `×`/`%` unit.
fn is_number(cell: &str) -> bool {
    let t = cell.trim().trim_end_matches(['×', '%']).trim();
    t == "-" || t.parse::<f64>().is_ok()
}

fn quote(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

/// Why a CSV text did not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CsvError {
    /// The text is empty.
    #[error("empty")]
    Empty,
    /// A quoted field is not closed.
    #[error("line {0}: unterminated quoted field")]
    Unterminated(usize),
    /// A quote appears inside an unquoted field, or text follows a closing quote.
    #[error("line {0}: stray quote")]
    StrayQuote(usize),
    /// A row's width differs from the header's.
    #[error("line {line}: {found} fields, the header has {expected}")]
    Width {
        /// 1-based line of the row.
        line: usize,
        /// Fields found.
        found: usize,
        /// Fields of the header.
        expected: usize,
    },
    /// A header field is empty.
    #[error("the header has an empty column name")]
    EmptyColumn,
}

/// Parses RFC 4180 CSV (quoted fields, doubled quotes, `\n` or `\r\n` line ends) into a
/// [`Table`], checking every row against the header's width.
pub fn parse_csv(text: &str) -> Result<Table, CsvError> {
    let mut records: Vec<(usize, Vec<String>)> = Vec::new();
    let mut field = String::new();
    let mut record = Vec::new();
    let mut chars = text.chars().peekable();
    let (mut line, mut start_line) = (1usize, 1usize);
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                _ => {
                    if c == '\n' {
                        line += 1;
                    }
                    field.push(c);
                }
            }
            continue;
        }
        match c {
            '"' if field.is_empty() && !was_quoted => {
                quoted = true;
                was_quoted = true;
            }
            '"' => return Err(CsvError::StrayQuote(line)),
            ',' => {
                record.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                record.push(std::mem::take(&mut field));
                records.push((start_line, std::mem::take(&mut record)));
                was_quoted = false;
                line += 1;
                start_line = line;
            }
            _ if was_quoted => return Err(CsvError::StrayQuote(line)),
            _ => field.push(c),
        }
    }
    if quoted {
        return Err(CsvError::Unterminated(start_line));
    }
    if !field.is_empty() || !record.is_empty() || was_quoted {
        record.push(field);
        records.push((start_line, record));
    }
    let mut records = records.into_iter();
    let (_, header) = records.next().ok_or(CsvError::Empty)?;
    if header.iter().any(|h| h.is_empty()) {
        return Err(CsvError::EmptyColumn);
    }
    let mut table = Table {
        header,
        rows: Vec::new(),
    };
    for (line, row) in records {
        if row.len() != table.header.len() {
            return Err(CsvError::Width {
                line,
                found: row.len(),
                expected: table.header.len(),
            });
        }
        table.rows.push(row);
    }
    Ok(table)
}

/// `v` with `digits` decimal places, or `-` when not finite.
pub fn num(v: f64, digits: usize) -> String {
    if v.is_finite() {
        format!("{v:.digits$}")
    } else {
        "-".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn quoting_round_trips() {
        let mut t = Table::new(&["method", "note"]);
        t.push(vec!["SkillZip X8A8B8".into(), "a, \"b\"\nc".into()]);
        t.push(vec![String::new(), "x".into()]);
        assert_eq!(parse_csv(&t.to_csv()).unwrap(), t);
    }

    #[test]
    fn markdown_right_aligns_numeric_columns() {
        let mut t = Table::new(&["method", "ratio", "share"]);
        t.push(vec!["a".into(), "2.5×".into(), "-".into()]);
        t.push(vec!["b".into(), "10×".into(), "90 %".into()]);
        assert_eq!(
            t.to_markdown(),
            "| method | ratio | share |\n|---|---:|---:|\n| a | 2.5× | - |\n| b | 10× | 90 % |\n"
        );
    }

    #[test]
    fn malformed_csv_is_refused() {
        assert_eq!(parse_csv(""), Err(CsvError::Empty));
        assert_eq!(parse_csv("a,\n1,2\n"), Err(CsvError::EmptyColumn));
        assert!(matches!(
            parse_csv("a,b\n1\n"),
            Err(CsvError::Width { line: 2, .. })
        ));
        assert_eq!(parse_csv("a,b\n\"1,2\n"), Err(CsvError::Unterminated(2)));
        assert_eq!(parse_csv("a,b\n1\"x,2\n"), Err(CsvError::StrayQuote(2)));
        assert_eq!(parse_csv("a,b\n\"1\"x,2\n"), Err(CsvError::StrayQuote(2)));
        assert_eq!(parse_csv("a,b\r\n1,2\r\n").unwrap().rows, [["1", "2"]]);
    }

    proptest! {
        #[test]
        fn any_table_round_trips(
            width in 1usize..5,
            cells in proptest::collection::vec("[a-z,\"\n ]{0,6}", 0..20),
        ) {
            let header: Vec<String> = (0..width).map(|i| format!("c{i}")).collect();
            let rows: Vec<Vec<String>> = cells
                .chunks_exact(width)
                .map(|c| c.to_vec())
                .collect();
            let t = Table { header, rows };
            prop_assert_eq!(parse_csv(&t.to_csv()).unwrap(), t);
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,80}") {
            let _ = parse_csv(&text);
        }
    }
}
