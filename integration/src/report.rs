//! Readable terminal output: steps with progress, tables, and colour only on a terminal.

use std::io::IsTerminal;
use std::time::Instant;

/// Prints `[n/N] what ...` and then ` ok (0.4 s)` or ` FAILED` when the step ends.
#[derive(Debug)]
pub struct Steps {
    total: usize,
    done: usize,
    colour: bool,
}

impl Steps {
    pub fn new(total: usize) -> Steps {
        Steps { total, done: 0, colour: std::io::stdout().is_terminal() }
    }

    /// Runs one step, printing its outcome.
    pub fn run<T, E: std::fmt::Display>(&mut self, what: &str, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        use std::io::Write;
        self.done += 1;
        print!("[{}/{}] {what} ", self.done, self.total);
        let _ = std::io::stdout().flush();
        let start = Instant::now();
        let out = f();
        match &out {
            Ok(_) => println!("{} ({:.1} s)", self.paint("ok", Colour::Green), start.elapsed().as_secs_f64()),
            Err(e) => println!("{}: {e}", self.paint("FAILED", Colour::Red)),
        }
        out
    }

    pub fn paint(&self, text: &str, colour: Colour) -> String {
        paint(self.colour, text, colour)
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Colour {
    Green,
    Red,
    Bold,
}

pub fn paint(enabled: bool, text: &str, colour: Colour) -> String {
    if !enabled {
        return text.to_string();
    }
    let code = match colour {
        Colour::Green => "32",
        Colour::Red => "31",
        Colour::Bold => "1",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// A left-aligned text table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..headers.len())
        .map(|c| rows.iter().map(|r| visible_len(&r[c])).chain([headers[c].len()]).max().unwrap_or(0))
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> =
            cells.iter().zip(&widths).map(|(c, w)| format!("{c}{}", " ".repeat(w - visible_len(c)))).collect();
        format!("  {}\n", padded.join("  ").trim_end())
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Length without ANSI colour codes.
fn visible_len(s: &str) -> usize {
    let mut len = 0;
    let mut in_escape = false;
    for c in s.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (false, _) => len += 1,
            _ => {}
        }
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_ignoring_colour() {
        let rows = vec![vec!["n1".to_string(), paint(true, "yes", Colour::Green)], vec!["node-10".into(), "no".into()]];
        let t = table(&["NODE", "READY"], &rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "  NODE     READY");
        assert_eq!(lines[2], "  node-10  no");
        assert!(lines[1].starts_with("  n1       "));
    }
}
