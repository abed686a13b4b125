//! What the Markdown docs name that the binaries must have: command lines of `weft-agent` and
//! `weft-lab` with their flags, bare `--flag` mentions, `weft_*` metric names, HTTP endpoints, and
//! the shell blocks a reader is told to run. Pure text functions; `tests/docs.rs` compares them
//! with the built binaries and runs the blocks.

use std::collections::BTreeSet;

/// The binaries whose command lines the docs show (the `weft` plugin has no command line).
pub const BINARIES: [&str; 2] = ["weft-agent", "weft-lab"];

/// Crate names that look like metric names (`weft_agent=debug`, `weft_cni::state`).
const CRATES: [&str; 4] = ["weft_agent", "weft_cni", "weft_lab", "weft_overlay"];

/// A piece of code in a Markdown text: an inline `span` or a fenced block with its info string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code {
    pub text: String,
    /// `None` for an inline span; the fence's info string (`sh`, `text`, `""`) for a block.
    pub lang: Option<String>,
    /// 1-based line of the span or of the block's first line, for messages.
    pub line: usize,
}

/// Every inline code span and fenced block of `markdown`.
pub fn code(markdown: &str) -> Vec<Code> {
    let mut out = Vec::new();
    let mut block: Option<(String, usize, Vec<&str>)> = None;
    for (i, line) in markdown.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut block, fence) {
            (Some((lang, start, lines)), Some(_)) => {
                out.push(Code { text: lines.join("\n"), lang: Some(lang.clone()), line: *start });
                block = None;
            }
            (Some((_, _, lines)), None) => lines.push(line),
            (None, Some(info)) => block = Some((info.trim().to_string(), i + 2, Vec::new())),
            (None, None) => {
                let mut parts = line.split('`');
                parts.next();
                while let (Some(span), Some(_)) = (parts.next(), parts.next()) {
                    out.push(Code { text: span.to_string(), lang: None, line: i + 1 });
                }
                // An unclosed span (or the text after the last span) is skipped by the pairing.
            }
        }
    }
    out
}

/// A command line of one of [`BINARIES`]: the subcommand path and the flags given to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub binary: String,
    /// Leading words that are not flags (`["bench", "convergence"]`); the caller decides which
    /// of them are subcommands by asking `--help`.
    pub words: Vec<String>,
    pub flags: Vec<String>,
}

/// Shell words that end a command.
fn ends_command(word: &str) -> bool {
    matches!(word, "|" | "||" | "&&" | ";" | "#" | ")" | ">" | "<" | "2>&1") || word.starts_with('#')
}

/// `--name` of a word like `--name=value` or `--name`, if it is a long flag.
pub fn flag_of(word: &str) -> Option<String> {
    let rest = word.strip_prefix("--")?;
    let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
    name.starts_with(|c: char| c.is_ascii_lowercase()).then(|| format!("--{name}"))
}

/// The [`BINARIES`] command lines in a piece of code, by bare name or by path
/// (`target/…/release/weft-agent`). Placeholders like `[flags]` or `<pod>` are not words.
pub fn invocations(code: &str) -> Vec<Invocation> {
    let mut out = Vec::new();
    for line in code.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        for (i, word) in words.iter().enumerate() {
            let name = word.trim_start_matches(['(', '"', '$']).rsplit('/').next().unwrap_or(word);
            // `cargo test -p weft-lab --test docs`: a package name, not a command.
            let named_by_cargo = i > 0 && matches!(words[i - 1], "-p" | "--package" | "--bin");
            if !BINARIES.contains(&name) || named_by_cargo {
                continue;
            }
            let mut inv = Invocation { binary: name.to_string(), words: Vec::new(), flags: Vec::new() };
            // Words right after the binary are subcommands or arguments; after anything else
            // (a placeholder, a flag, a diagram line) only flags count.
            let mut in_words = true;
            for w in words[i + 1..].iter().take_while(|w| !ends_command(w)) {
                if *w == "--" {
                    break; // `weft-lab exec n1 -- cmd`: the rest belongs to another program
                }
                // `[--json]`: an optional flag in a synopsis.
                if let Some(flag) = flag_of(w.trim_start_matches('[')) {
                    inv.flags.push(flag);
                    in_words = false;
                } else if in_words && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') && !w.starts_with('-') {
                    inv.words.push(w.to_string());
                } else {
                    in_words = false;
                }
            }
            out.push(inv);
        }
    }
    out
}

/// Flags named on their own in an inline span (`--mtu`, `--status-addr=<node IP>:9473`,
/// `--force`), which belong to no command line shown with them.
pub fn bare_flags(span: &str) -> Vec<String> {
    let words: Vec<&str> = span.split_whitespace().collect();
    match words.first() {
        Some(first) if first.starts_with("--") => words.iter().filter_map(|w| flag_of(w)).collect(),
        _ => Vec::new(),
    }
}

/// `weft_*` names in a text that are metric names (not crate paths or log targets).
pub fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("weft_") {
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || "_-/.:".contains(c)) {
            continue;
        }
        let name: String =
            text[i..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
        let after = &text[i + name.len()..];
        if CRATES.contains(&name.as_str()) || after.starts_with("::") || name.ends_with('_') {
            continue;
        }
        names.insert(name);
    }
    names
}

/// HTTP paths a text requests from the agent: after `:<port>` of an address (`127.0.0.1:9473/readyz`,
/// `$(NODE_IP):9474/metrics`) or after `GET `.
pub fn endpoints(text: &str) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    let path_at = |s: &str| -> Option<String> {
        let rest = s.strip_prefix('/')?;
        let seg: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '/').collect();
        (!seg.is_empty()).then(|| format!("/{}", seg.trim_end_matches('/')))
    };
    for (i, _) in text.match_indices(':') {
        let port: String = text[i + 1..].chars().take_while(char::is_ascii_digit).collect();
        if port.len() >= 2 {
            paths.extend(path_at(&text[i + 1 + port.len()..]));
        }
    }
    for (i, _) in text.match_indices("GET ") {
        paths.extend(path_at(&text[i + 4..]));
    }
    paths
}

/// The flags a clap `--help` text lists.
pub fn help_flags(help: &str) -> BTreeSet<String> {
    help.lines()
        .filter_map(|l| {
            let t = l.trim_start();
            let t = t.strip_prefix("-h, ").or_else(|| t.strip_prefix("-V, ")).unwrap_or(t);
            flag_of(t.split_whitespace().next()?)
        })
        .collect()
}

/// The subcommands a clap `--help` text lists under `Commands:`.
pub fn help_subcommands(help: &str) -> BTreeSet<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// The fenced blocks of `markdown` whose info string is `lang`: the ones a test runs.
pub fn blocks(markdown: &str, lang: &str) -> Vec<Code> {
    code(markdown).into_iter().filter(|c| c.lang.as_deref() == Some(lang)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "Run `weft-agent cleanup --force` or `--mtu`.\n\
        ```sh\n\
        target/x86_64-unknown-linux-gnu/release/weft-lab exec n1 -- ping -c 1 10.244.0.2\n\
        cargo test -p weft-lab --test docs; weft-agent ◀── gossip ──▶ weft-agent\n\
        weft-agent status --cluster | grep x   # weft_gossip_rejected_total{reason}\n\
        ```\n\
        ```text\n\
        curl -s 127.0.0.1:9473/readyz\n\
        ```\n\
        `weft_cni::state::NodeState`, `weft_agent=debug`, `kubectl logs --previous`, GET /healthz.\n";

    #[test]
    fn finds_spans_and_blocks_with_their_language_and_line() {
        let code = code(DOC);
        let langs: Vec<Option<&str>> = code.iter().map(|c| c.lang.as_deref()).collect();
        assert_eq!(langs, [None, None, Some("sh"), Some("text"), None, None, None]);
        assert_eq!((code[2].line, code[3].line), (3, 8));
        assert_eq!(blocks(DOC, "sh").len(), 1);
    }

    #[test]
    fn finds_command_lines_by_name_or_path_and_stops_at_the_command_end() {
        let all: Vec<Invocation> = code(DOC).iter().flat_map(|c| invocations(&c.text)).collect();
        let shown: Vec<(&str, Vec<&str>, Vec<&str>)> = all
            .iter()
            .map(|i| {
                (
                    i.binary.as_str(),
                    i.words.iter().map(String::as_str).collect(),
                    i.flags.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                ("weft-agent", vec!["cleanup"], vec!["--force"]),
                ("weft-lab", vec!["exec", "n1"], vec![]),
                ("weft-agent", vec![], vec![]),
                ("weft-agent", vec![], vec![]),
                ("weft-agent", vec!["status"], vec!["--cluster"]),
            ]
        );
    }

    #[test]
    fn a_flag_that_does_not_exist_is_seen_so_the_check_can_fail() {
        let help = "Usage: weft-agent cleanup [OPTIONS]\n\nOptions:\n      --state-dir <STATE_DIR>  Directory\n      --force  Also\n  -h, --help  Print help\n";
        let known = help_flags(help);
        assert_eq!(known, ["--force", "--help", "--state-dir"].map(String::from).into());
        let named = invocations("weft-agent cleanup [--frce] --state-dir=/run/weft");
        let unknown: Vec<&String> = named[0].flags.iter().filter(|f| !known.contains(*f)).collect();
        assert_eq!(unknown, ["--frce"]);
        assert_eq!(bare_flags("--nope=3"), ["--nope"]);
        assert!(bare_flags("kubectl logs --previous").is_empty(), "a flag of another command is not bare");
    }

    #[test]
    fn lists_subcommands_of_a_help_text() {
        let help = "x\n\nUsage: weft-lab <COMMAND>\n\nCommands:\n  demo    Build\n  up      Up\n  help    Print\n\nOptions:\n  -h, --help  Print help\n";
        assert_eq!(help_subcommands(help), ["demo", "help", "up"].map(String::from).into());
    }

    #[test]
    fn finds_metric_names_but_not_crate_paths_or_log_targets() {
        let names = metric_names(DOC);
        assert_eq!(names, ["weft_gossip_rejected_total".to_string()].into());
        assert!(metric_names("/usr/lib/weft_x weft-lab `firewall::weft_table`").is_empty());
    }

    #[test]
    fn finds_endpoints_after_a_port_or_get() {
        let found = endpoints(&format!("{DOC} $(NODE_IP):9474/metrics, at 10:30 /x"));
        assert_eq!(found, ["/healthz", "/metrics", "/readyz"].map(String::from).into());
    }
}
