//! The nftables state weft compares, parsed from nfnetlink dumps of tables, chains, rules,
//! sets, objects and flowtables: only the few fields weft needs (table and chain names, hooks,
//! policies, rule handles, comments and counters), so nothing breaks on expressions weft does
//! not know (iptables-nft's xt matches, anything another tool writes). What counts mirrors what
//! `nft list ruleset` shows, which is what weft compared before it read nfnetlink itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::COMMENT_PREFIX;
use super::netlink::{Attrs, Message, NFTA_LIST_ELEM, nft_msg};
use super::table::{BaseChain, ChainShape, TableShape};
use crate::underlay::Family;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected nfnetlink listing: {0}")]
pub struct ListingError(pub String);

/// What the kernel holds that weft cares about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// The shape of weft's own table; `None` when the table does not exist.
    pub table: Option<TableShape>,
    /// The elements of each set of weft's table, by set name (dumped set by set after the
    /// listing has named the sets).
    pub elements: BTreeMap<String, BTreeSet<IpAddr>>,
    /// The counters of weft's own rules, by rule comment.
    pub counters: BTreeMap<String, Counter>,
    /// Chains of other tables that weft must act on: IPv4 forward hooks whose policy drops
    /// (Docker's), and any chain holding rules weft inserted earlier. In listing order.
    pub foreign: Vec<ForeignChain>,
}

/// A rule's `counter` statement as the kernel last counted it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignChain {
    pub family: String,
    pub table: String,
    pub name: String,
    /// A base chain at the forward hook, in family ip or inet, with policy drop.
    pub forward_drop: bool,
    /// weft's rules in it: (handle, comment).
    pub weft_rules: Vec<(u64, String)>,
}

// From linux/netfilter.h, linux/netfilter/nf_tables.h and libnftnl's udata.h.
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_NEWOBJ: u16 = 18;
const NFT_MSG_NEWFLOWTABLE: u16 = 22;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_OBJ_TABLE: u16 = 1;
const NFTA_FLOWTABLE_TABLE: u16 = 1;
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_CONSTANT: u32 = 0x2;
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_EVAL: u32 = 0x20;
const NFT_SET_OBJECT: u32 = 0x40;
/// nft's numbers for `ipv4_addr` and `ipv6_addr` (TYPE_IPADDR, TYPE_IP6ADDR in nft's
/// datatype.h), what the kernel keeps as the set's key type.
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;

/// Named sets weft never writes: maps (nft lists them as `map`) and sets with any of the flags
/// nft shows (`constant`, `interval`, `timeout`, `dynamic`; nft 1.0.6 leaves `dynamic` out of
/// its JSON, later versions print it). A plain `type ipv4_addr` set has none of them.
const OTHER_SET_FLAGS: u32 =
    NFT_SET_MAP | NFT_SET_OBJECT | NFT_SET_CONSTANT | NFT_SET_INTERVAL | NFT_SET_TIMEOUT | NFT_SET_EVAL;

/// Address families as nft names them (linux/netfilter.h's NFPROTO_*).
const FAMILIES: [(u8, &str); 6] = [(1, "inet"), (2, "ip"), (3, "arp"), (5, "netdev"), (7, "bridge"), (10, "ip6")];

fn family_name(family: u8) -> &'static str {
    FAMILIES.iter().find(|(n, _)| *n == family).map_or("unknown", |(_, name)| name)
}

pub(super) fn family_number(name: &str) -> Option<u8> {
    FAMILIES.iter().find(|(_, n)| *n == name).map(|(number, _)| *number)
}

/// A hook's name as nft prints it; the numbers overlap between families.
fn hook_name(family: u8, hook: u32) -> &'static str {
    match (family_name(family), hook) {
        ("ip" | "ip6" | "inet" | "bridge", 0) => "prerouting",
        ("ip" | "ip6" | "inet" | "bridge", 1) => "input",
        ("ip" | "ip6" | "inet" | "bridge", 2) => "forward",
        ("ip" | "ip6" | "inet" | "bridge", 3) => "output",
        ("ip" | "ip6" | "inet" | "bridge", 4) => "postrouting",
        ("ip" | "ip6" | "inet" | "bridge", 5) => "ingress",
        ("arp", 0) => "input",
        ("arp", 1) => "output",
        ("arp", 2) => "forward",
        ("netdev", 0) => "ingress",
        ("netdev", 1) => "egress",
        _ => "unknown",
    }
}

/// Parses the messages of the dumps, tables and chains before rules; `family`/`name` name
/// weft's own table. Messages of other kinds are skipped.
pub fn parse<'a>(
    messages: impl IntoIterator<Item = Message<'a>>,
    family: &str,
    name: &str,
) -> Result<Listing, ListingError> {
    let mut table_found = false;
    let mut own: Vec<ChainShape> = Vec::new();
    let mut sets: Vec<(String, String)> = Vec::new();
    let mut counters = BTreeMap::new();
    let mut others = 0;
    let mut foreign: Vec<ForeignChain> = Vec::new();
    let mut foreign_index: HashMap<(String, String, String), usize> = HashMap::new();
    for m in messages {
        let Some(msg) = nft_msg(m.kind) else {
            continue;
        };
        let table_attr = match msg {
            NFT_MSG_NEWTABLE => NFTA_TABLE_NAME,
            NFT_MSG_NEWCHAIN => NFTA_CHAIN_TABLE,
            NFT_MSG_NEWRULE => NFTA_RULE_TABLE,
            NFT_MSG_NEWSET => NFTA_SET_TABLE,
            NFT_MSG_NEWOBJ => NFTA_OBJ_TABLE,
            NFT_MSG_NEWFLOWTABLE => NFTA_FLOWTABLE_TABLE,
            _ => continue,
        };
        let number = m.family().ok_or_else(|| ListingError(format!("message {:#x} without a family", m.kind)))?;
        let fam = family_name(number);
        let a = m.attrs();
        let table = required(a, table_attr, "table", &m)?;
        let ours = fam == family && table == name;
        match msg {
            NFT_MSG_NEWTABLE => table_found |= ours,
            NFT_MSG_NEWCHAIN => {
                let chain = required(a, NFTA_CHAIN_NAME, "chain name", &m)?;
                let base = base_chain(number, a);
                if ours {
                    own.push(ChainShape { name: chain, base, comments: Vec::new() });
                    continue;
                }
                let forward_drop =
                    matches!(fam, "ip" | "inet") && base.is_some_and(|b| b.hook == "forward" && b.policy == "drop");
                let key = (fam.to_string(), table, chain);
                foreign_index.insert(key.clone(), foreign.len());
                foreign.push(ForeignChain {
                    family: key.0,
                    table: key.1,
                    name: key.2,
                    forward_drop,
                    weft_rules: Vec::new(),
                });
            }
            NFT_MSG_NEWRULE => {
                let chain = required(a, NFTA_RULE_CHAIN, "chain", &m)?;
                let comment = a.get(NFTA_RULE_USERDATA).and_then(rule_comment);
                if ours {
                    let shape = own
                        .iter_mut()
                        .find(|c| c.name == chain)
                        .ok_or_else(|| ListingError(format!("rule of unknown chain {chain}")))?;
                    if let Some(comment) = &comment {
                        if let Some(counter) = rule_counter(a)? {
                            counters.insert(comment.clone(), counter);
                        }
                    }
                    shape.comments.push(comment);
                    continue;
                }
                let Some(comment) = comment.filter(|c| c.starts_with(COMMENT_PREFIX)) else {
                    continue;
                };
                let handle = a
                    .be64(NFTA_RULE_HANDLE)
                    .ok_or_else(|| ListingError(format!("rule {comment} in {table} {chain} without a handle")))?;
                if let Some(&i) = foreign_index.get(&(fam.to_string(), table, chain)) {
                    foreign[i].weft_rules.push((handle, comment));
                }
            }
            NFT_MSG_NEWSET if ours => {
                let flags = a.be32(NFTA_SET_FLAGS).unwrap_or(0);
                // Anonymous sets belong to the rules that use them; nft does not list them.
                if flags & NFT_SET_ANONYMOUS != 0 {
                    continue;
                }
                let set = required(a, NFTA_SET_NAME, "set name", &m)?;
                if flags & OTHER_SET_FLAGS != 0 {
                    others += 1;
                } else {
                    sets.push((set, key_type_name(a.be32(NFTA_SET_KEY_TYPE))));
                }
            }
            NFT_MSG_NEWOBJ | NFT_MSG_NEWFLOWTABLE if ours => others += 1,
            _ => {}
        }
    }
    foreign.retain(|c| c.forward_drop || !c.weft_rules.is_empty());
    own.sort_by(|a, b| a.name.cmp(&b.name));
    sets.sort();
    let table = table_found.then_some(TableShape { chains: own, sets, others });
    Ok(Listing { table, elements: BTreeMap::new(), counters, foreign })
}

/// A string attribute every message of its kind has.
fn required(a: Attrs<'_>, kind: u16, what: &str, m: &Message<'_>) -> Result<String, ListingError> {
    a.string(kind).ok_or_else(|| ListingError(format!("message {:#x} without a {what}", m.kind)))
}

/// A base chain has a hook with number and priority, and a type (as nft requires to print one).
fn base_chain(family: u8, a: Attrs<'_>) -> Option<BaseChain> {
    let hook = a.nested(NFTA_CHAIN_HOOK);
    let (number, priority) = (hook.be32(NFTA_HOOK_HOOKNUM)?, hook.be32(NFTA_HOOK_PRIORITY)?);
    let policy = match a.be32(NFTA_CHAIN_POLICY) {
        Some(NF_DROP) => "drop",
        Some(NF_ACCEPT) | None => "accept",
        Some(_) => "unknown",
    };
    Some(BaseChain {
        kind: a.string(NFTA_CHAIN_TYPE)?,
        hook: hook_name(family, number).to_string(),
        // The kernel sends the signed priority as a big-endian u32.
        priority: i64::from(priority as i32),
        policy: policy.to_string(),
    })
}

/// The comment nft keeps in a rule's userdata: libnftnl's TLVs (type u8, length u8, value), the
/// comment a NUL-terminated string. Other tools' userdata may hold anything: what does not
/// parse is no comment.
fn rule_comment(udata: &[u8]) -> Option<String> {
    let mut at = 0;
    while let Some(&[kind, len]) = udata.get(at..at + 2) {
        let value = udata.get(at + 2..at + 2 + usize::from(len))?;
        if kind == NFTNL_UDATA_RULE_COMMENT {
            let (&0, text) = value.split_last()? else {
                return None;
            };
            let text = text.split(|&b| b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        at += 2 + usize::from(len);
    }
    None
}

/// The first `counter` expression of a rule. Other expressions are not looked at.
fn rule_counter(a: Attrs<'_>) -> Result<Option<Counter>, ListingError> {
    let expressions = a.nested(NFTA_RULE_EXPRESSIONS).into_iter().filter(|(kind, _)| *kind == NFTA_LIST_ELEM);
    for expression in expressions.map(|(_, e)| Attrs::of(e)) {
        if expression.string(NFTA_EXPR_NAME).as_deref() != Some("counter") {
            continue;
        }
        let data = expression.nested(NFTA_EXPR_DATA);
        return match (data.be64(NFTA_COUNTER_PACKETS), data.be64(NFTA_COUNTER_BYTES)) {
            (Some(packets), Some(bytes)) => Ok(Some(Counter { packets, bytes })),
            _ => Err(ListingError("a counter without 64-bit packets and bytes".into())),
        };
    }
    Ok(None)
}

/// nft's name for a set's key type, for the types weft writes; any other differs from them.
fn key_type_name(key_type: Option<u32>) -> String {
    match key_type {
        Some(TYPE_IPADDR) => Family::Ipv4.nft_addr_type().to_string(),
        Some(TYPE_IP6ADDR) => Family::Ipv6.nft_addr_type().to_string(),
        Some(other) => format!("type {other}"),
        None => "no type".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::netlink::tests::done;
    use crate::nft::netlink::{NLA_F_NESTED, Reply, attr, messages, nft_kind, nul_terminated, request};

    const IP: u8 = 2;
    const INET: u8 = 1;
    const IP6: u8 = 10;
    /// NLM_F_MULTI, as on every message of a dump.
    const MULTI: u16 = 2;
    const FORWARD: u32 = 2;
    const POSTROUTING: u32 = 4;

    fn msg(kind: u16, family: u8, attrs: &[u8]) -> Vec<u8> {
        request(nft_kind(kind), MULTI, 9, family, attrs)
    }

    fn text(out: &mut Vec<u8>, kind: u16, s: &str) {
        attr(out, kind, &nul_terminated(s));
    }

    fn table(family: u8, name: &str) -> Vec<u8> {
        let mut a = Vec::new();
        text(&mut a, NFTA_TABLE_NAME, name);
        msg(NFT_MSG_NEWTABLE, family, &a)
    }

    /// A chain; `base` is (type, hook number, priority, policy).
    fn chain(family: u8, table: &str, name: &str, base: Option<(&str, u32, i32, u32)>) -> Vec<u8> {
        let mut a = Vec::new();
        text(&mut a, NFTA_CHAIN_TABLE, table);
        attr(&mut a, 2, &7u64.to_be_bytes()); // NFTA_CHAIN_HANDLE, not read
        text(&mut a, NFTA_CHAIN_NAME, name);
        if let Some((kind, hook, priority, policy)) = base {
            let mut h = Vec::new();
            attr(&mut h, NFTA_HOOK_HOOKNUM, &hook.to_be_bytes());
            attr(&mut h, NFTA_HOOK_PRIORITY, &priority.to_be_bytes());
            attr(&mut a, NFTA_CHAIN_HOOK | NLA_F_NESTED, &h);
            attr(&mut a, NFTA_CHAIN_POLICY, &policy.to_be_bytes());
            text(&mut a, NFTA_CHAIN_TYPE, kind);
        }
        msg(NFT_MSG_NEWCHAIN, family, &a)
    }

    /// One expression of a rule: its name and its data.
    fn expr(name: &str, data: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        text(&mut e, NFTA_EXPR_NAME, name);
        attr(&mut e, NFTA_EXPR_DATA | NLA_F_NESTED, data);
        e
    }

    fn counter(packets: u64, bytes: u64) -> Vec<u8> {
        let mut d = Vec::new();
        attr(&mut d, NFTA_COUNTER_BYTES, &bytes.to_be_bytes());
        attr(&mut d, NFTA_COUNTER_PACKETS, &packets.to_be_bytes());
        attr(&mut d, 3, &[0; 4]); // NFTA_COUNTER_PAD
        expr("counter", &d)
    }

    /// An `accept`: an immediate expression whose data weft never reads.
    fn accept() -> Vec<u8> {
        expr("immediate", &[8, 0, 1, 0, 0, 0, 0, 0])
    }

    /// A comment as nft writes it into a rule's userdata.
    fn comment_udata(comment: &str) -> Vec<u8> {
        let value = nul_terminated(comment);
        let mut u = vec![NFTNL_UDATA_RULE_COMMENT, value.len() as u8];
        u.extend(value);
        u
    }

    fn rule(family: u8, table: &str, chain: &str, handle: u64, udata: Option<Vec<u8>>, exprs: &[Vec<u8>]) -> Vec<u8> {
        let mut a = Vec::new();
        text(&mut a, NFTA_RULE_TABLE, table);
        text(&mut a, NFTA_RULE_CHAIN, chain);
        attr(&mut a, NFTA_RULE_HANDLE, &handle.to_be_bytes());
        let mut list = Vec::new();
        for e in exprs {
            attr(&mut list, NFTA_LIST_ELEM | NLA_F_NESTED, e);
        }
        attr(&mut a, NFTA_RULE_EXPRESSIONS | NLA_F_NESTED, &list);
        if let Some(udata) = udata {
            attr(&mut a, NFTA_RULE_USERDATA, &udata);
        }
        msg(NFT_MSG_NEWRULE, family, &a)
    }

    fn commented(family: u8, table: &str, chain: &str, handle: u64, comment: &str, exprs: &[Vec<u8>]) -> Vec<u8> {
        rule(family, table, chain, handle, Some(comment_udata(comment)), exprs)
    }

    fn set(family: u8, table: &str, name: &str, flags: u32, key_type: u32) -> Vec<u8> {
        let mut a = Vec::new();
        text(&mut a, NFTA_SET_TABLE, table);
        text(&mut a, NFTA_SET_NAME, name);
        if flags != 0 {
            attr(&mut a, NFTA_SET_FLAGS, &flags.to_be_bytes());
        }
        attr(&mut a, NFTA_SET_KEY_TYPE, &key_type.to_be_bytes());
        attr(&mut a, 5, &4u32.to_be_bytes()); // NFTA_SET_KEY_LEN
        msg(NFT_MSG_NEWSET, family, &a)
    }

    /// A named object or a flowtable of `table`.
    fn in_table(kind: u16, family: u8, table: &str, name: &str) -> Vec<u8> {
        let mut a = Vec::new();
        text(&mut a, 1, table);
        text(&mut a, 2, name);
        msg(kind, family, &a)
    }

    /// Dumps as the kernel answers them for a weft table next to Docker's iptables-nft FORWARD
    /// chain: tables, chains, rules, sets, in that order.
    fn sample() -> Vec<u8> {
        let udp_dport = expr("payload", &[8, 0, 1, 0, 0, 0, 0, 1]);
        let xt_match = expr("match", &[12, 0, 1, 0, b'c', b'o', b'n', b'n', b't', b'r', b'k', 0]);
        [
            table(IP, "filter"),
            table(INET, "weft"),
            table(IP6, "weft"),
            chain(IP, "filter", "FORWARD", Some(("filter", FORWARD, 0, NF_DROP))),
            chain(IP, "filter", "DOCKER", None),
            chain(IP, "filter", "OLD", Some(("filter", FORWARD, 0, NF_ACCEPT))),
            chain(INET, "weft", "postrouting", Some(("nat", POSTROUTING, 100, NF_ACCEPT))),
            chain(INET, "weft", "forward", Some(("filter", FORWARD, 0, NF_ACCEPT))),
            chain(IP6, "weft", "forward", Some(("filter", FORWARD, 0, NF_DROP))),
            commented(IP, "filter", "FORWARD", 7, "weft:0011aabb", &[accept()]),
            commented(IP, "filter", "FORWARD", 2, "docker-own", &[xt_match.clone(), counter(0, 0)]),
            rule(IP, "filter", "DOCKER", 3, None, &[xt_match]),
            commented(IP, "filter", "OLD", 9, "weft:ffffffff", &[accept()]),
            commented(INET, "weft", "forward", 3, "weft:1234abcd", &[accept()]),
            rule(INET, "weft", "forward", 4, None, &[accept()]),
            commented(INET, "weft", "forward", 8, "weft:99990000", &[udp_dport, counter(3, 150), accept()]),
            set(INET, "weft", "s", 0, TYPE_IPADDR),
            set(INET, "weft", "empty", 0, TYPE_IPADDR),
            set(INET, "weft", "ranges", NFT_SET_INTERVAL, TYPE_IPADDR),
        ]
        .concat()
    }

    fn parse_bytes(bytes: &[u8]) -> Result<Listing, ListingError> {
        parse(messages(bytes), "inet", "weft")
    }

    #[test]
    fn reads_weft_table_shape() {
        let l = parse_bytes(&sample()).unwrap();
        let t = l.table.unwrap();
        // The interval set holds elements weft never writes: it counts as foreign.
        assert_eq!(t.others, 1);
        assert_eq!(t.chains.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["forward", "postrouting"]);
        assert_eq!(t.chains[0].comments, [Some("weft:1234abcd".to_string()), None, Some("weft:99990000".to_string())]);
        assert_eq!(t.sets, [("empty".to_string(), "ipv4_addr".to_string()), ("s".into(), "ipv4_addr".into())]);
        let base = t.chains[1].base.as_ref().unwrap();
        assert_eq!(
            (base.kind.as_str(), base.hook.as_str(), base.priority, base.policy.as_str()),
            ("nat", "postrouting", 100, "accept")
        );
        assert!(l.elements.is_empty(), "elements are dumped set by set, not parsed here");
    }

    #[test]
    fn reads_rule_counters() {
        let l = parse_bytes(&sample()).unwrap();
        // Only rules of weft's table with a comment and a counter, past expressions weft does not know.
        assert_eq!(l.counters.len(), 1);
        assert_eq!(l.counters["weft:99990000"], Counter { packets: 3, bytes: 150 });
    }

    #[test]
    fn finds_forward_drop_chains_and_weft_rules_in_foreign_tables() {
        let l = parse_bytes(&sample()).unwrap();
        let names: Vec<_> = l.foreign.iter().map(|c| (c.table.as_str(), c.name.as_str(), c.forward_drop)).collect();
        // ip6 is not IPv4 traffic; DOCKER is a regular chain without weft rules.
        assert_eq!(names, [("filter", "FORWARD", true), ("filter", "OLD", false)]);
        assert_eq!(l.foreign[0].family, "ip");
        assert_eq!(l.foreign[0].weft_rules, [(7, "weft:0011aabb".to_string())]);
        assert_eq!(l.foreign[1].weft_rules, [(9, "weft:ffffffff".to_string())]);
    }

    #[test]
    fn an_empty_ruleset_has_no_table() {
        assert_eq!(parse_bytes(&[]).unwrap(), Listing::default());
        // Another family's table of the same name is not weft's.
        assert_eq!(parse_bytes(&table(IP, "weft")).unwrap(), Listing::default());
        // A table without a name is no ruleset the kernel sends.
        assert!(parse_bytes(&msg(NFT_MSG_NEWTABLE, INET, &[])).is_err());
    }

    #[test]
    fn a_listing_read_over_several_reads_is_the_same() {
        let bytes = sample();
        let all: Vec<_> = messages(&bytes).collect();
        let mut reply = Reply::new(9);
        // Three messages a read, the last read closed by NLMSG_DONE.
        for (i, part) in all.chunks(3).enumerate() {
            let mut read: Vec<u8> = part.iter().flat_map(|m| msg_bytes(m)).collect();
            if (i + 1) * 3 >= all.len() {
                read.extend(done(9, 0));
            }
            assert_eq!(reply.absorb(read), Ok((i + 1) * 3 >= all.len()));
        }
        assert_eq!(parse(reply.messages(), "inet", "weft").unwrap(), parse_bytes(&bytes).unwrap());
    }

    /// A parsed message back as bytes (all of the sample's have sequence number 9 and no padding
    /// after their attributes).
    fn msg_bytes(m: &Message<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((16 + m.body.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&m.kind.to_ne_bytes());
        out.extend_from_slice(&MULTI.to_ne_bytes());
        out.extend_from_slice(&m.seq.to_ne_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(m.body);
        out
    }

    #[test]
    fn sets_maps_objects_and_flowtables_of_weft_table() {
        const NFT_SET_EXPR: u32 = 0x100;
        const TYPE_IP6ADDR: u32 = 8;
        let bytes = [
            table(INET, "weft"),
            // Anonymous sets belong to rules; nft does not list them.
            set(INET, "weft", "__set0", NFT_SET_ANONYMOUS | NFT_SET_CONSTANT, TYPE_IPADDR),
            // A map, a set with timeouts and a dynamic one: nothing weft writes.
            set(INET, "weft", "m", NFT_SET_MAP, TYPE_IPADDR),
            set(INET, "weft", "t", NFT_SET_TIMEOUT, TYPE_IPADDR),
            set(INET, "weft", "d", NFT_SET_EVAL, TYPE_IPADDR),
            // Flags nft does not show keep a plain set; another key type is not weft's type.
            set(INET, "weft", "counted", NFT_SET_EXPR, TYPE_IPADDR),
            set(INET, "weft", "v6", 0, TYPE_IP6ADDR),
            // A named counter and a flowtable; another table's are not counted.
            in_table(NFT_MSG_NEWOBJ, INET, "weft", "c"),
            in_table(NFT_MSG_NEWFLOWTABLE, INET, "weft", "f"),
            in_table(NFT_MSG_NEWOBJ, IP, "weft", "c"),
            set(IP, "weft", "s", NFT_SET_INTERVAL, TYPE_IPADDR),
        ]
        .concat();
        let t = parse_bytes(&bytes).unwrap().table.unwrap();
        assert_eq!(t.others, 5);
        assert_eq!(t.sets, [("counted".to_string(), "ipv4_addr".to_string()), ("v6".into(), "ipv6_addr".into())]);
    }

    #[test]
    fn foreign_rules_may_hold_anything() {
        let garbage = expr("no-such-expression", &[0xff; 7]);
        let bytes = [
            table(IP, "filter"),
            chain(IP, "filter", "FORWARD", Some(("filter", FORWARD, 0, NF_DROP))),
            // Userdata of another tool, a truncated TLV, a comment without its NUL.
            rule(IP, "filter", "FORWARD", 1, Some(vec![1, 2, 0xaa, 0xbb]), std::slice::from_ref(&garbage)),
            rule(IP, "filter", "FORWARD", 2, Some(vec![0, 40, b'w']), &[]),
            rule(IP, "filter", "FORWARD", 3, Some(vec![0, 4, b'w', b'e', b'f', b't']), &[]),
            // Another tool's userdata before the comment; a counter with odd data in a foreign rule.
            rule(
                IP,
                "filter",
                "FORWARD",
                4,
                Some([vec![1, 1, 0], comment_udata("weft:00000001")].concat()),
                &[garbage, expr("counter", &[])],
            ),
        ]
        .concat();
        let l = parse_bytes(&bytes).unwrap();
        assert_eq!(l.foreign.len(), 1);
        assert_eq!(l.foreign[0].weft_rules, [(4, "weft:00000001".to_string())]);
    }

    #[test]
    fn malformed_replies_of_weft_table_are_errors() {
        let weft =
            [table(INET, "weft"), chain(INET, "weft", "forward", Some(("filter", FORWARD, 0, NF_ACCEPT)))].concat();
        let unknown_chain = [weft.clone(), commented(INET, "weft", "input", 1, "weft:1", &[])].concat();
        assert!(parse_bytes(&unknown_chain).is_err());
        let bad_counter =
            [weft.clone(), commented(INET, "weft", "forward", 1, "weft:1", &[expr("counter", &[])])].concat();
        assert!(parse_bytes(&bad_counter).is_err());
        let nameless_chain = [
            weft,
            msg(NFT_MSG_NEWCHAIN, INET, &{
                let mut a = Vec::new();
                text(&mut a, NFTA_CHAIN_TABLE, "weft");
                a
            }),
        ]
        .concat();
        assert!(parse_bytes(&nameless_chain).is_err());
    }

    #[test]
    fn hooks_are_named_per_family() {
        assert_eq!(hook_name(INET, 2), "forward");
        assert_eq!(hook_name(INET, 5), "ingress");
        assert_eq!(hook_name(3, 1), "output");
        assert_eq!(hook_name(3, 2), "forward");
        assert_eq!(hook_name(5, 0), "ingress");
        assert_eq!(hook_name(5, 1), "egress");
        assert_eq!(hook_name(5, 2), "unknown");
        assert_eq!(family_name(IP6), "ip6");
        assert_eq!(family_number("inet"), Some(INET));
        assert_eq!(family_name(0), "unknown");
    }

    #[test]
    fn a_weft_rule_without_userdata_has_no_comment() {
        let bytes = [
            table(INET, "weft"),
            chain(INET, "weft", "forward", Some(("filter", FORWARD, -5, NF_DROP))),
            rule(INET, "weft", "forward", 1, None, &[counter(1, 2)]),
        ]
        .concat();
        let l = parse_bytes(&bytes).unwrap();
        let t = l.table.unwrap();
        assert_eq!(t.chains[0].comments, [None]);
        assert_eq!(t.chains[0].base.as_ref().map(|b| (b.priority, b.policy.as_str())), Some((-5, "drop")));
        assert!(l.counters.is_empty());
    }
}
