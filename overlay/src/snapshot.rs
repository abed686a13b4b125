//! Reading the kernel once per apply: one dump per object kind, the nftables listing (over
//! nfnetlink, on its own socket) and the two sysctls weft sets. The result is plain data the
//! planner diffs against; nothing here decides anything.

use std::collections::BTreeMap;

use ipnet::IpNet;

use crate::firewall;
use crate::netlink::{Netlink, NetlinkError};
use crate::nft::{Listing, NftSocket};
use crate::objects::{FdbEntry, Link, Neighbour, Route};
use crate::sysctl;
use crate::underlay::Family;

/// The value weft gives `rp_filter` on vxlan0: loose (see docs/datapath.md).
pub const RP_FILTER_LOOSE: &str = "2";

/// What the kernel holds, as far as weft is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    pub links: Vec<Link>,
    /// Every address of both families as (link index, address).
    pub addresses: Vec<(u32, IpNet)>,
    /// IPv4 and IPv6 routes of the main table, of every protocol.
    pub routes: Vec<Route>,
    /// IPv4 and IPv6 neighbours of every device.
    pub neighbours: Vec<Neighbour>,
    /// NTF_SELF forwarding entries of every device.
    pub fdb: Vec<FdbEntry>,
    /// The nftables state, or why it could not be read (then nftables is left alone).
    pub nft: Result<Listing, String>,
    /// Each family's forwarding sysctl that is readable (`net.ipv4.ip_forward`,
    /// `net.ipv6.conf.all.forwarding`).
    pub forwarding: BTreeMap<Family, String>,
    /// `rp_filter` of each VXLAN device that exists (and has the key).
    pub vxlan_rp_filter: BTreeMap<Family, String>,
}

impl Kernel {
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    pub fn addresses_of(&self, index: u32) -> impl Iterator<Item = IpNet> + '_ {
        self.addresses.iter().filter(move |(i, _)| *i == index).map(|(_, a)| *a)
    }
}

/// Reads everything; fails only when a netlink dump fails. The kernel runs one dump at a time
/// per netlink socket (a second one gets EBUSY), so the dumps go one after the other, while the
/// nftables listing is read on its own socket (on the blocking pool) meanwhile.
pub async fn read(nl: &Netlink, nft: &NftSocket) -> Result<Kernel, NetlinkError> {
    let nft_listing = async { nft.listing(firewall::FAMILY, firewall::TABLE).await.map_err(|e| e.to_string()) };
    let dumps = async {
        Ok::<_, NetlinkError>((
            nl.links().await?,
            nl.all_addresses().await?,
            nl.routes().await?,
            nl.all_neighbours().await?,
            nl.all_fdb().await?,
        ))
    };
    let (dumps, nft) = futures::join!(dumps, nft_listing);
    let (links, addresses, routes, neighbours, fdb) = dumps?;
    Ok(Kernel {
        links,
        addresses,
        routes,
        neighbours,
        fdb,
        nft,
        forwarding: Family::ALL
            .into_iter()
            .filter_map(|f| Some((f, sysctl::read(sysctl::forwarding_key(f)).ok()?)))
            .collect(),
        vxlan_rp_filter: Family::ALL
            .into_iter()
            .filter_map(|f| Some((f, sysctl::read(&sysctl::dev_key("rp_filter", f.vxlan_device())).ok()?)))
            .collect(),
    })
}
