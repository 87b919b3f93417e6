//! Sites: which site a host is in, and which sites are next closest.
//!
//! A site is a `cairnSite` entry with any number of `cairnSubnet` values
//! (CIDR, IPv4 or IPv6). A site link is a `cairnSiteLink` entry whose
//! `cairnSiteRef` values name two or more sites and whose `cairnCost` (an
//! integer, 100 when absent) is the cost of going between any two of them.
//! [`SiteMap::build`] turns that plain data into a map; it never fails:
//! every value it cannot use is skipped and reported in
//! [`SiteMap::problems`], so one bad entry cannot stop hosts from booting.
//!
//! # Names
//!
//! Sites are keyed by their normalized DN ([`Dn::norm`]: lowercased,
//! whitespace around separators dropped), so `CN=East,DC=example` and
//! `cn=east, dc=example` are the same site; a string that is not a valid DN
//! is keyed by its trimmed, lowercased text. The DN as first given is kept
//! for display ([`Site::dn`]). "Name order" everywhere below is the order of
//! these keys ([`Site::key`]), plain `str` ordering.
//!
//! # Subnets
//!
//! - A subnet is `address/length`; the length is required (a bare address is
//!   reported), must be decimal digits and at most 32 (IPv4) or 128 (IPv6).
//! - Host bits may be set and are masked: `10.1.2.3/16` is `10.1.0.0/16`.
//! - A subnet inside `::ffff:0:0/96` (IPv4-mapped IPv6) with a length of 96
//!   or more is stored as the IPv4 subnet it denotes (`::ffff:10.0.0.0/104`
//!   is `10.0.0.0/8`).
//! - A malformed subnet is reported and skipped; the site keeps its others.
//! - The same network listed by two sites is reported; the tie rule below
//!   decides which site gets it.
//!
//! # Which site an address is in ([`SiteMap::site_of`])
//!
//! An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is treated as the IPv4
//! address `a.b.c.d`, so it matches IPv4 subnets. The subnet with the
//! longest prefix containing the address wins, across all sites
//! (`10.1.0.0/16` beats `10.0.0.0/8`). When two sites list equally long
//! subnets containing the address (which only happens when they list the
//! same network), the site first in name order wins. IPv4 addresses never
//! match IPv6 subnets and vice versa (so an IPv6 subnet shorter than /96
//! never matches an IPv4-mapped address). No containing subnet: `None`.
//!
//! # Next closest sites ([`SiteMap::by_cost_from`])
//!
//! Every site, ordered by the least total link cost from the given site
//! (shortest paths over the link graph, so a route through several links is
//! found when it is cheaper than a direct link). The given site comes first
//! at cost 0 (even if a zero-cost link makes another site cost 0 too), then
//! the rest by cost, equal costs in name order, then the sites no chain of
//! links reaches, cost `None`, in name order. With no site (`None`) or a DN
//! that is not a site, every site has cost `None`, so the result is all sites
//! in name order.
//!
//! Link rules:
//! - A link joins every pair of distinct known sites it names; between two
//!   sites the cheapest link counts.
//! - A `cairnSiteRef` naming no known site is reported and dropped from the
//!   link; a link naming fewer than two distinct known sites joins nothing
//!   and is reported.
//! - A negative cost is reported and the link is skipped (a cost of 0 is
//!   allowed). Path costs add up saturating at `u64::MAX`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::dn::Dn;

/// `cairnCost` of a site link that has none.
pub const DEFAULT_LINK_COST: u64 = 100;

/// An IP network: an address with its host bits cleared, and a prefix
/// length. IPv4-mapped networks are stored as IPv4 (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subnet {
    addr: IpAddr,
    prefix: u8,
}

/// A string that is not a subnet in CIDR notation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a subnet: {reason}")]
pub struct SubnetError {
    pub value: String,
    pub reason: String,
}

impl Subnet {
    /// Parses `address/length` (surrounding whitespace ignored), masking
    /// host bits.
    pub fn parse(value: &str) -> Result<Subnet, SubnetError> {
        let bad = |reason: &str| SubnetError {
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let Some((addr, len)) = value.trim().split_once('/') else {
            return Err(bad("no /length (e.g. 10.1.0.0/16)"));
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| bad("not an IPv4 or IPv6 address before the /"))?;
        let len = len.trim();
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("the length after / is not a number"));
        }
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match len.parse::<u8>() {
            Ok(p) if p <= max => p,
            _ => return Err(bad(&format!("the length is more than {max}"))),
        };
        Ok(Subnet::new(addr, prefix))
    }

    /// The network of `addr` with `prefix` bits, clamped to the family's
    /// width; IPv4-mapped networks of /96 or longer become IPv4.
    pub fn new(addr: IpAddr, prefix: u8) -> Subnet {
        match addr {
            IpAddr::V4(a) => {
                let prefix = prefix.min(32);
                let bits = u32::from(a) & mask_v4(prefix);
                Subnet {
                    addr: IpAddr::V4(Ipv4Addr::from(bits)),
                    prefix,
                }
            }
            IpAddr::V6(a) => {
                let prefix = prefix.min(128);
                let masked = Ipv6Addr::from(u128::from(a) & mask_v6(prefix));
                match masked.to_ipv4_mapped() {
                    Some(v4) if prefix >= 96 => Subnet::new(IpAddr::V4(v4), prefix - 96),
                    _ => Subnet {
                        addr: IpAddr::V6(masked),
                        prefix,
                    },
                }
            }
        }
    }

    /// The network address (host bits zero).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `addr` is in this network; IPv4-mapped IPv6 addresses are
    /// taken as IPv4.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.addr, canonical(addr)) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                u32::from(a) & mask_v4(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                u128::from(a) & mask_v6(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn mask_v4(prefix: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0)
}

/// `addr`, with an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) turned into
/// the IPv4 address it carries.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// The key a site DN is compared by: its normalized DN, or its trimmed,
/// lowercased text when it does not parse as a DN.
pub fn site_key(dn: &str) -> String {
    match Dn::parse(dn) {
        Ok(d) => d.norm(),
        Err(_) => dn.trim().to_lowercase(),
    }
}

/// A site as read from its `cairnSite` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteSpec {
    pub dn: String,
    /// The `cairnSubnet` values as stored.
    pub subnets: Vec<String>,
}

/// A site link as read from its `cairnSiteLink` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSpec {
    /// The link's own DN, used only in reports.
    pub dn: String,
    /// The `cairnSiteRef` values.
    pub sites: Vec<String>,
    /// `cairnCost`; `None` means [`DEFAULT_LINK_COST`].
    pub cost: Option<i64>,
}

/// A site with its usable subnets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    dn: String,
    key: String,
    subnets: Vec<Subnet>,
}

impl Site {
    /// The DN as given, for display.
    pub fn dn(&self) -> &str {
        &self.dn
    }

    /// The comparison key (see the module doc's "Names").
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The subnets that parsed, masked, in the order given.
    pub fn subnets(&self) -> &[Subnet] {
        &self.subnets
    }
}

/// Something in the site data that [`SiteMap::build`] skipped or had to
/// decide about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SiteProblem {
    #[error("site {site}: {error}; subnet ignored")]
    BadSubnet { site: String, error: SubnetError },
    #[error("site {site} is listed twice; the second is ignored")]
    DuplicateSite { site: String },
    #[error("subnet {subnet} is in both site {kept} and site {other}; {kept} wins")]
    DuplicateSubnet {
        subnet: Subnet,
        kept: String,
        other: String,
    },
    #[error("site link {link} names {site}, which is not a site; reference ignored")]
    UnknownSite { link: String, site: String },
    #[error("site link {link} joins fewer than two sites; it has no effect")]
    TooFewSites { link: String },
    #[error("site link {link} has negative cost {cost}; link ignored")]
    NegativeCost { link: String, cost: i64 },
}

/// Sites, their subnets and the costs between them.
#[derive(Debug, Clone, Default)]
pub struct SiteMap {
    /// In name order; indexes into this are the graph's nodes.
    sites: Vec<Site>,
    /// `adjacent[i]`: (neighbour, cheapest direct link cost), by neighbour.
    adjacent: Vec<Vec<(usize, u64)>>,
    problems: Vec<SiteProblem>,
}

impl SiteMap {
    /// Builds the map, skipping and reporting what it cannot use (see the
    /// module doc).
    pub fn build(sites: &[SiteSpec], links: &[LinkSpec]) -> SiteMap {
        let mut problems = Vec::new();

        let mut by_key: BTreeMap<String, Site> = BTreeMap::new();
        for spec in sites {
            let key = site_key(&spec.dn);
            if by_key.contains_key(&key) {
                problems.push(SiteProblem::DuplicateSite {
                    site: spec.dn.clone(),
                });
                continue;
            }
            let mut subnets = Vec::new();
            for value in &spec.subnets {
                match Subnet::parse(value) {
                    Ok(s) if !subnets.contains(&s) => subnets.push(s),
                    Ok(_) => {}
                    Err(error) => problems.push(SiteProblem::BadSubnet {
                        site: spec.dn.clone(),
                        error,
                    }),
                }
            }
            let site = Site {
                dn: spec.dn.clone(),
                key: key.clone(),
                subnets,
            };
            by_key.insert(key, site);
        }
        let sites: Vec<Site> = by_key.into_values().collect();

        // Same network in two sites: the first in name order keeps it.
        let mut owner: BTreeMap<(IpAddr, u8), usize> = BTreeMap::new();
        for (i, site) in sites.iter().enumerate() {
            for s in &site.subnets {
                match owner.get(&(s.addr, s.prefix)) {
                    Some(&first) => problems.push(SiteProblem::DuplicateSubnet {
                        subnet: *s,
                        kept: sites[first].dn.clone(),
                        other: site.dn.clone(),
                    }),
                    None => {
                        owner.insert((s.addr, s.prefix), i);
                    }
                }
            }
        }

        let index: BTreeMap<&str, usize> = sites
            .iter()
            .enumerate()
            .map(|(i, s)| (s.key.as_str(), i))
            .collect();
        let mut cheapest: BTreeMap<(usize, usize), u64> = BTreeMap::new();
        for link in links {
            let cost = match link.cost {
                None => DEFAULT_LINK_COST,
                Some(c) => match u64::try_from(c) {
                    Ok(c) => c,
                    Err(_) => {
                        problems.push(SiteProblem::NegativeCost {
                            link: link.dn.clone(),
                            cost: c,
                        });
                        continue;
                    }
                },
            };
            let mut members: Vec<usize> = Vec::new();
            for r in &link.sites {
                match index.get(site_key(r).as_str()) {
                    Some(&i) if !members.contains(&i) => members.push(i),
                    Some(_) => {}
                    None => problems.push(SiteProblem::UnknownSite {
                        link: link.dn.clone(),
                        site: r.clone(),
                    }),
                }
            }
            if members.len() < 2 {
                problems.push(SiteProblem::TooFewSites {
                    link: link.dn.clone(),
                });
                continue;
            }
            for &a in &members {
                for &b in &members {
                    if a != b {
                        let c = cheapest.entry((a, b)).or_insert(cost);
                        *c = (*c).min(cost);
                    }
                }
            }
        }
        let mut adjacent = vec![Vec::new(); sites.len()];
        for ((a, b), cost) in cheapest {
            if let Some(list) = adjacent.get_mut(a) {
                list.push((b, cost));
            }
        }

        SiteMap {
            sites,
            adjacent,
            problems,
        }
    }

    /// All sites, in name order.
    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    /// What was skipped or decided while building, in input order.
    pub fn problems(&self) -> &[SiteProblem] {
        &self.problems
    }

    /// The site with `dn` (compared by [`site_key`]).
    pub fn site(&self, dn: &str) -> Option<&Site> {
        self.index_of(dn).and_then(|i| self.sites.get(i))
    }

    fn index_of(&self, dn: &str) -> Option<usize> {
        let key = site_key(dn);
        self.sites
            .binary_search_by(|s| s.key.as_str().cmp(key.as_str()))
            .ok()
    }

    /// The site whose subnet is the longest match for `addr`; ties go to
    /// the site first in name order. See the module doc.
    pub fn site_of(&self, addr: IpAddr) -> Option<&Site> {
        let mut best: Option<(&Site, u8)> = None;
        for site in &self.sites {
            for s in &site.subnets {
                // Strictly longer only: sites are in name order, so the
                // first site keeps a tie.
                if s.contains(addr) && best.is_none_or(|(_, p)| s.prefix > p) {
                    best = Some((site, s.prefix));
                }
            }
        }
        best.map(|(site, _)| site)
    }

    /// The sites a site link joins directly to the site `dn` (with the
    /// cheapest such link's cost), by name: the sites it replicates with.
    pub fn neighbours(&self, dn: &str) -> Vec<(&Site, u64)> {
        let Some(i) = self.index_of(dn) else {
            return vec![];
        };
        self.adjacent
            .get(i)
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .filter_map(|&(j, cost)| Some((self.sites.get(j)?, cost)))
            .collect()
    }

    /// Every site with its least total link cost from the site `from`
    /// (`None` when unreachable), ordered as the module doc says: `from`
    /// first, then by cost, then by name, unreachable sites last.
    pub fn by_cost_from(&self, from: Option<&str>) -> Vec<(&Site, Option<u64>)> {
        let start = from.and_then(|dn| self.index_of(dn));
        let mut dist: Vec<Option<u64>> = vec![None; self.sites.len()];
        if let Some(s) = start {
            // Dijkstra; costs are non-negative by construction.
            let mut heap = BinaryHeap::new();
            if let Some(d) = dist.get_mut(s) {
                *d = Some(0);
            }
            heap.push(Reverse((0u64, s)));
            while let Some(Reverse((cost, i))) = heap.pop() {
                if dist.get(i).copied().flatten().is_some_and(|d| cost > d) {
                    continue;
                }
                for &(j, step) in self.adjacent.get(i).map(Vec::as_slice).unwrap_or(&[]) {
                    let next = cost.saturating_add(step);
                    if let Some(d) = dist.get_mut(j)
                        && d.is_none_or(|d| next < d)
                    {
                        *d = Some(next);
                        heap.push(Reverse((next, j)));
                    }
                }
            }
        }
        let mut order: Vec<usize> = (0..self.sites.len()).collect();
        // Index order is name order, so it settles ties.
        order.sort_by_key(|&i| {
            let d = dist.get(i).copied().flatten();
            (d.is_none(), Some(i) != start, d, i)
        });
        order
            .into_iter()
            .filter_map(|i| {
                let site = self.sites.get(i)?;
                Some((site, dist.get(i).copied().flatten()))
            })
            .collect()
    }
}

/// The name a site is known by: the value of its entry's first RDN (the
/// DN itself when it does not parse).
pub fn site_name(site_dn: &str) -> String {
    crate::dn::Dn::parse(site_dn)
        .ok()
        .and_then(|d| {
            d.rdn()
                .and_then(|r| r.avas().first().map(|a| a.value.clone()))
        })
        .unwrap_or_else(|| site_dn.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUFFIX: &str = "ou=sites,dc=example,dc=com";

    fn dn(cn: &str) -> String {
        format!("cn={cn},{SUFFIX}")
    }

    fn site(cn: &str, subnets: &[&str]) -> SiteSpec {
        SiteSpec {
            dn: dn(cn),
            subnets: subnets.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn link(sites: &[&str], cost: Option<i64>) -> LinkSpec {
        LinkSpec {
            dn: format!("cn={},ou=links,dc=example,dc=com", sites.join("-")),
            sites: sites.iter().map(|s| dn(s)).collect(),
            cost,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn located(map: &SiteMap, addr: &str) -> Option<String> {
        map.site_of(ip(addr)).map(|s| s.dn().to_string())
    }

    /// (cn, cost) in result order, for readable assertions.
    fn order(map: &SiteMap, from: Option<&str>) -> Vec<(String, Option<u64>)> {
        map.by_cost_from(from)
            .into_iter()
            .map(|(s, c)| {
                let cn = s.dn().split(',').next().unwrap_or("");
                (cn.trim_start_matches("cn=").to_string(), c)
            })
            .collect()
    }

    fn pairs(v: &[(&str, Option<u64>)]) -> Vec<(String, Option<u64>)> {
        v.iter().map(|(n, c)| (n.to_string(), *c)).collect()
    }

    #[test]
    fn subnet_parse_masks_host_bits_and_rejects_garbage() {
        let s = Subnet::parse(" 10.1.2.3/16 ").unwrap();
        assert_eq!(s.to_string(), "10.1.0.0/16");
        assert_eq!(
            Subnet::parse("fd00:1::5/48").unwrap().to_string(),
            "fd00:1::/48"
        );
        assert_eq!(Subnet::parse("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
        assert_eq!(
            Subnet::parse("::ffff:10.1.0.0/112").unwrap().to_string(),
            "10.1.0.0/16"
        );
        for bad in [
            "10.1.0.0",
            "10.1.0.0/33",
            "fd00::/129",
            "10.1.0.0/+8",
            "10.1.0/16",
            "x/8",
            "10.0.0.0/",
        ] {
            assert!(Subnet::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn longest_prefix_wins() {
        let map = SiteMap::build(
            &[
                site("wide", &["10.0.0.0/8"]),
                site("east", &["10.1.0.0/16"]),
            ],
            &[],
        );
        assert_eq!(located(&map, "10.1.2.3"), Some(dn("east")));
        assert_eq!(located(&map, "10.2.2.3"), Some(dn("wide")));
    }

    #[test]
    fn ipv6_address_matches_ipv6_subnet() {
        let map = SiteMap::build(
            &[
                site("east", &["10.1.0.0/16", "fd00:1::/48"]),
                site("west", &["fd00:2::/48"]),
            ],
            &[],
        );
        assert_eq!(located(&map, "fd00:1:0:5::9"), Some(dn("east")));
        assert_eq!(located(&map, "fd00:2::1"), Some(dn("west")));
        assert_eq!(located(&map, "fd00:3::1"), None);
    }

    #[test]
    fn ipv4_mapped_ipv6_matches_ipv4_subnet() {
        let map = SiteMap::build(
            &[site("east", &["10.1.0.0/16"]), site("all6", &["::/0"])],
            &[],
        );
        assert_eq!(located(&map, "::ffff:10.1.2.3"), Some(dn("east")));
        assert_eq!(located(&map, "::ffff:10.9.2.3"), None);
        assert_eq!(located(&map, "2001:db8::1"), Some(dn("all6")));
    }

    #[test]
    fn no_matching_subnet_is_none() {
        let map = SiteMap::build(&[site("east", &["10.1.0.0/16"])], &[]);
        assert_eq!(located(&map, "192.168.1.1"), None);
        assert_eq!(SiteMap::build(&[], &[]).site_of(ip("10.1.0.1")), None);
    }

    #[test]
    fn malformed_subnet_is_reported_not_fatal() {
        let map = SiteMap::build(
            &[site("east", &["10.1.0.0/66", "10.1.0.0/16", "banana"])],
            &[],
        );
        assert_eq!(located(&map, "10.1.0.1"), Some(dn("east")));
        assert_eq!(map.sites()[0].subnets().len(), 1);
        let reported: Vec<String> = map.problems().iter().map(|p| p.to_string()).collect();
        assert_eq!(reported.len(), 2, "{reported:?}");
        assert!(reported[0].contains("10.1.0.0/66"), "{}", reported[0]);
        assert!(reported[1].contains("banana"), "{}", reported[1]);
    }

    #[test]
    fn same_subnet_in_two_sites_goes_to_first_name_and_is_reported() {
        let map = SiteMap::build(
            &[
                site("west", &["10.5.0.0/16"]),
                site("East", &["10.5.0.0/16"]),
            ],
            &[],
        );
        assert_eq!(located(&map, "10.5.0.1"), Some(dn("East")));
        assert!(matches!(
            map.problems(),
            [SiteProblem::DuplicateSubnet { kept, .. }] if *kept == dn("East")
        ));
    }

    #[test]
    fn site_dns_compare_case_insensitively_and_keep_display_form() {
        let map = SiteMap::build(
            &[SiteSpec {
                dn: "CN=East, OU=Sites,DC=Example,DC=com".into(),
                subnets: vec!["10.1.0.0/16".into()],
            }],
            &[],
        );
        let s = map.site(&dn("east")).unwrap();
        assert_eq!(s.dn(), "CN=East, OU=Sites,DC=Example,DC=com");
        assert_eq!(s.key(), dn("east"));
        assert_eq!(
            order(&map, Some(&dn("EAST"))),
            pairs(&[("CN=East", Some(0))])
        );
    }

    #[test]
    fn multi_hop_path_beats_expensive_direct_link() {
        let map = SiteMap::build(
            &[site("a", &[]), site("b", &[]), site("c", &[])],
            &[
                link(&["a", "b"], Some(100)),
                link(&["b", "c"], Some(100)),
                link(&["a", "c"], Some(500)),
            ],
        );
        assert_eq!(
            order(&map, Some(&dn("a"))),
            pairs(&[("a", Some(0)), ("b", Some(100)), ("c", Some(200))])
        );
        assert_eq!(
            order(&map, Some(&dn("c"))),
            pairs(&[("c", Some(0)), ("b", Some(100)), ("a", Some(200))])
        );
    }

    #[test]
    fn link_naming_three_sites_joins_every_pair() {
        let map = SiteMap::build(
            &[site("a", &[]), site("b", &[]), site("c", &[])],
            &[link(&["a", "b", "c"], Some(30))],
        );
        assert_eq!(
            order(&map, Some(&dn("c"))),
            pairs(&[("c", Some(0)), ("a", Some(30)), ("b", Some(30))])
        );
    }

    #[test]
    fn unreachable_sites_come_last_in_name_order() {
        let map = SiteMap::build(
            &[
                site("a", &[]),
                site("z", &[]),
                site("m", &[]),
                site("b", &[]),
            ],
            &[link(&["a", "z"], Some(5))],
        );
        assert_eq!(
            order(&map, Some(&dn("a"))),
            pairs(&[("a", Some(0)), ("z", Some(5)), ("b", None), ("m", None)])
        );
    }

    #[test]
    fn equal_costs_are_ordered_by_name() {
        let map = SiteMap::build(
            &[
                site("hub", &[]),
                site("zeta", &[]),
                site("alpha", &[]),
                site("mid", &[]),
            ],
            &[
                link(&["hub", "zeta"], Some(10)),
                link(&["hub", "alpha"], Some(10)),
                link(&["hub", "mid"], Some(10)),
            ],
        );
        assert_eq!(
            order(&map, Some(&dn("hub"))),
            pairs(&[
                ("hub", Some(0)),
                ("alpha", Some(10)),
                ("mid", Some(10)),
                ("zeta", Some(10))
            ])
        );
    }

    #[test]
    fn missing_cost_defaults_to_100() {
        let map = SiteMap::build(
            &[site("a", &[]), site("b", &[]), site("c", &[])],
            &[link(&["a", "b"], None), link(&["a", "c"], Some(101))],
        );
        assert_eq!(
            order(&map, Some(&dn("a"))),
            pairs(&[
                ("a", Some(0)),
                ("b", Some(DEFAULT_LINK_COST)),
                ("c", Some(101))
            ])
        );
    }

    #[test]
    fn cheapest_of_parallel_links_counts() {
        let map = SiteMap::build(
            &[site("a", &[]), site("b", &[])],
            &[link(&["a", "b"], Some(70)), link(&["b", "a"], Some(20))],
        );
        assert_eq!(
            order(&map, Some(&dn("a"))),
            pairs(&[("a", Some(0)), ("b", Some(20))])
        );
    }

    #[test]
    fn start_site_is_first_even_with_zero_cost_link() {
        let map = SiteMap::build(
            &[site("a", &[]), site("b", &[])],
            &[link(&["a", "b"], Some(0))],
        );
        assert_eq!(
            order(&map, Some(&dn("b"))),
            pairs(&[("b", Some(0)), ("a", Some(0))])
        );
    }

    #[test]
    fn no_site_or_unknown_site_gives_all_sites_in_name_order() {
        let map = SiteMap::build(
            &[site("c", &[]), site("a", &[]), site("b", &[])],
            &[link(&["a", "b"], Some(1))],
        );
        let all = pairs(&[("a", None), ("b", None), ("c", None)]);
        assert_eq!(order(&map, None), all);
        assert_eq!(order(&map, Some(&dn("nowhere"))), all);
    }

    #[test]
    fn bad_links_are_reported_and_ignored() {
        let map = SiteMap::build(
            &[site("a", &[]), site("b", &[]), site("a", &["10.0.0.0/8"])],
            &[
                link(&["a", "ghost"], Some(1)),
                link(&["a", "b"], Some(-5)),
                link(&["a", "b"], Some(40)),
            ],
        );
        assert!(matches!(
            map.problems(),
            [
                SiteProblem::DuplicateSite { .. },
                SiteProblem::UnknownSite { .. },
                SiteProblem::TooFewSites { .. },
                SiteProblem::NegativeCost { cost: -5, .. },
            ]
        ));
        // The duplicate's subnet was not taken; the valid link still counts.
        assert_eq!(located(&map, "10.0.0.1"), None);
        assert_eq!(
            order(&map, Some(&dn("a"))),
            pairs(&[("a", Some(0)), ("b", Some(40))])
        );
    }

    #[test]
    fn huge_costs_saturate_instead_of_overflowing() {
        let map = SiteMap::build(
            &[
                site("a", &[]),
                site("b", &[]),
                site("c", &[]),
                site("d", &[]),
            ],
            &[
                link(&["a", "b"], Some(i64::MAX)),
                link(&["b", "c"], Some(i64::MAX)),
                link(&["c", "d"], Some(i64::MAX)),
            ],
        );
        let got = order(&map, Some(&dn("a")));
        assert_eq!(got[3], ("d".to_string(), Some(u64::MAX)));
    }
}
