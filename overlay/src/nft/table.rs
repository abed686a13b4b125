//! A table as data: rendered to nft text for writing, reduced to a [`TableShape`] for comparing
//! with what the kernel lists.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::IpAddr;

use sha2::{Digest, Sha256};

use super::COMMENT_PREFIX;
use crate::underlay::Family;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub family: &'static str,
    pub name: &'static str,
    pub sets: Vec<Set>,
    pub chains: Vec<Chain>,
}

/// A named set of addresses of one family (`type ipv4_addr` or `ipv6_addr`). Its elements are written with the table
/// but are not part of its shape: they change with membership and are updated element by
/// element ([`super::elements`]), without rewriting the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub name: &'static str,
    pub family: Family,
    /// Of `family` only.
    pub elements: BTreeSet<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: &'static str,
    pub base: BaseChain,
    pub rules: Vec<Rule>,
}

/// How a base chain hooks into the stack. `priority` is numeric because that is how the JSON
/// listing reports it (filter = 0, srcnat = 100).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseChain {
    pub kind: String,
    pub hook: String,
    pub priority: i64,
    pub policy: String,
}

/// One rule: its nft text and the comment that identifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub text: String,
    pub comment: String,
}

impl Rule {
    /// A rule whose comment is `weft:` + 8 hex digits of a hash of the text: equal comments in
    /// the kernel mean an equal rule, whatever form nft prints it back in.
    pub fn new(text: impl Into<String>) -> Rule {
        let text = text.into();
        let digest = Sha256::digest(text.as_bytes());
        let comment = format!("{COMMENT_PREFIX}:{:02x}{:02x}{:02x}{:02x}", digest[0], digest[1], digest[2], digest[3]);
        Rule { text, comment }
    }

    /// The rule as nft writes it inside a chain or after `insert rule <chain>`.
    pub fn render(&self) -> String {
        format!("{} comment \"{}\"", self.text, self.comment)
    }
}

/// What identifies a table's content in the kernel: per chain, its hook and the comments of
/// its rules in order (order matters: `return`s must come before `masquerade`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableShape {
    /// Sorted by name.
    pub chains: Vec<ChainShape>,
    /// (name, type) of each set, sorted by name.
    pub sets: Vec<(String, String)>,
    /// Maps, flowtables, odd sets and other objects found in the table, which weft never
    /// writes: their presence means the table differs.
    pub others: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainShape {
    pub name: String,
    pub base: Option<BaseChain>,
    pub comments: Vec<Option<String>>,
}

impl Table {
    /// One transaction that replaces the table as a whole: `add` makes the `delete` safe when
    /// the table does not exist yet, and nothing is ever half-written.
    pub fn render_replace(&self) -> String {
        let (family, name) = (self.family, self.name);
        let mut s = format!("add table {family} {name}\ndelete table {family} {name}\n");
        let _ = writeln!(s, "table {family} {name} {{");
        for set in &self.sets {
            let _ = writeln!(s, "\tset {} {{", set.name);
            let _ = writeln!(s, "\t\ttype {}", set.family.nft_addr_type());
            // nft rejects an empty element list.
            if !set.elements.is_empty() {
                let elements: Vec<String> = set.elements.iter().map(IpAddr::to_string).collect();
                let _ = writeln!(s, "\t\telements = {{ {} }}", elements.join(", "));
            }
            s.push_str("\t}\n\n");
        }
        for (i, chain) in self.chains.iter().enumerate() {
            if i > 0 {
                s.push('\n');
            }
            let b = &chain.base;
            let _ = writeln!(s, "\tchain {} {{", chain.name);
            let _ = writeln!(s, "\t\ttype {} hook {} priority {}; policy {};", b.kind, b.hook, b.priority, b.policy);
            for rule in &chain.rules {
                let _ = writeln!(s, "\t\t{}", rule.render());
            }
            s.push_str("\t}\n");
        }
        s.push_str("}\n");
        s
    }

    pub fn shape(&self) -> TableShape {
        let mut chains: Vec<ChainShape> = self
            .chains
            .iter()
            .map(|c| ChainShape {
                name: c.name.to_string(),
                base: Some(c.base.clone()),
                comments: c.rules.iter().map(|r| Some(r.comment.clone())).collect(),
            })
            .collect();
        chains.sort_by(|a, b| a.name.cmp(&b.name));
        let mut sets: Vec<(String, String)> =
            self.sets.iter().map(|s| (s.name.to_string(), s.family.nft_addr_type().to_string())).collect();
        sets.sort();
        TableShape { chains, sets, others: 0 }
    }
}

/// Whether nft 1.0.6 accepts `name` unquoted as a table or chain name (it accepts no quoted
/// ones): a letter, `_` or `.` first, then letters, digits, `/`, `-`, `_`, `.`.
pub fn plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '.')
        && chars.all(|c| c.is_ascii_alphanumeric() || "/-_.".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        Table {
            family: "inet",
            name: "t",
            sets: vec![],
            chains: vec![Chain {
                name: "forward",
                base: BaseChain { kind: "filter".into(), hook: "forward".into(), priority: 0, policy: "accept".into() },
                rules: vec![Rule::new("ip saddr 10.0.0.0/8 accept")],
            }],
        }
    }

    #[test]
    fn comments_identify_the_rule_text() {
        let a = Rule::new("ip saddr 10.0.0.0/8 accept");
        assert_eq!(a, Rule::new("ip saddr 10.0.0.0/8 accept"));
        assert_ne!(a.comment, Rule::new("ip saddr 10.0.0.0/9 accept").comment);
        assert!(a.comment.starts_with("weft:"));
        assert_eq!(a.comment.len(), "weft:".len() + 8);
        assert_eq!(a.render(), format!("ip saddr 10.0.0.0/8 accept comment \"{}\"", a.comment));
    }

    #[test]
    fn renders_one_replacing_transaction() {
        let t = table();
        let c = &t.chains[0].rules[0].comment;
        assert_eq!(
            t.render_replace(),
            format!(
                "add table inet t\ndelete table inet t\ntable inet t {{\n\tchain forward {{\n\
                 \t\ttype filter hook forward priority 0; policy accept;\n\
                 \t\tip saddr 10.0.0.0/8 accept comment \"{c}\"\n\t}}\n}}\n"
            )
        );
    }

    fn set(elements: &[&str]) -> Set {
        Set { name: "peers", family: Family::Ipv4, elements: elements.iter().map(|e| e.parse().unwrap()).collect() }
    }

    #[test]
    fn sets_are_rendered_before_chains_with_their_elements() {
        let mut t = table();
        let v6 = Set { name: "six", family: Family::Ipv6, elements: ["2001:db8::2".parse().unwrap()].into() };
        t.sets = vec![set(&["198.51.100.10", "192.0.2.11"]), Set { name: "none", ..set(&[]) }, v6];
        let text = t.render_replace();
        assert!(
            text.contains(
                "table inet t {\n\tset peers {\n\t\ttype ipv4_addr\n\t\telements = { 192.0.2.11, 198.51.100.10 }\n\t}\n\n\
                 \tset none {\n\t\ttype ipv4_addr\n\t}\n\n\tset six {\n\t\ttype ipv6_addr\n\t\telements = { 2001:db8::2 }\n\t}\n\n\
                 \tchain forward {"
            ),
            "{text}"
        );
        // Elements are not part of the shape: membership changes are element updates.
        let shape = t.shape();
        assert_eq!(
            shape.sets,
            [
                ("none".to_string(), "ipv4_addr".to_string()),
                ("peers".into(), "ipv4_addr".into()),
                ("six".into(), "ipv6_addr".into())
            ]
        );
        t.sets[0].elements.clear();
        assert_eq!(t.shape(), shape);
    }

    #[test]
    fn shape_lists_chains_by_name_with_rule_comments() {
        let mut t = table();
        t.chains.insert(
            0,
            Chain {
                name: "postrouting",
                base: BaseChain {
                    kind: "nat".into(),
                    hook: "postrouting".into(),
                    priority: 100,
                    policy: "accept".into(),
                },
                rules: vec![],
            },
        );
        let shape = t.shape();
        assert_eq!(shape.chains[0].name, "forward");
        assert_eq!(shape.chains[0].comments.len(), 1);
        assert_eq!(shape.chains[1].name, "postrouting");
        assert_eq!(shape.others, 0);
    }

    #[test]
    fn only_plain_identifiers_are_addressable() {
        for ok in ["FORWARD", "filter", "DOCKER-USER", "_x.y/z"] {
            assert!(plain_identifier(ok), "{ok}");
        }
        for bad in ["", "1abc", "a b", "a\"b", "a;b"] {
            assert!(!plain_identifier(bad), "{bad}");
        }
    }
}
