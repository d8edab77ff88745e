//! Receiver URL sets: where the publisher sends its batches.
//!
//! The syntax is WSO2's:
//!
//! ```text
//! url-set := group ("," group)*   |   url
//! group   := "{" url ("," url)* "}"       round-robin over the healthy members
//!          | "{" url ("|" url)* "}"       ordered failover: all to the first healthy member
//! url     := ("tcp" | "tls" | "ssl") "://" host ":" port          (ssl = tls; host may be [v6])
//! ```
//!
//! Each group receives **every** batch: `{a,b},{c,d}` replicates to two clusters. Two groups in
//! front of the same database therefore count every event twice. A bare `tcp://h:p` is one group of
//! one member; several bare URLs (`tcp://a:1,tcp://b:2`) are refused as ambiguous — write `{a,b}`
//! to balance or `{a},{b}` to replicate.
//!
//! [`pick`] chooses the member of a group a batch goes to.

use std::fmt;
use std::str::FromStr;

use crate::error::UrlSetError;

/// The transport of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain TCP (`tcp://`).
    Tcp,
    /// TLS over TCP (`tls://`, or its alias `ssl://`).
    Tls,
}

/// One worker address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Transport.
    pub scheme: Scheme,
    /// Host name or IP address (IPv6 without the brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Endpoint {
    /// `host:port` as `TcpStream::connect` takes it (IPv6 bracketed).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Tcp => "tcp",
            Scheme::Tls => "tls",
        };
        write!(f, "{scheme}://{}", self.authority())
    }
}

impl FromStr for Endpoint {
    type Err = UrlSetError;

    fn from_str(s: &str) -> Result<Endpoint, UrlSetError> {
        parse_url(s)
    }
}

/// How a group spreads batches over its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupMode {
    /// `{a,b,c}`: round-robin over the healthy members.
    RoundRobin,
    /// `{a|b|c}`: everything to the first healthy member, in the order written.
    Failover,
}

/// One group of a URL set: it receives every batch, through one of its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointGroup {
    /// Balancing or failover (a group of one is `RoundRobin`).
    pub mode: GroupMode,
    /// The members, in the order written.
    pub members: Vec<Endpoint>,
}

/// A parsed receiver URL set: one or more groups, each receiving every batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlSet {
    /// The groups, in the order written.
    pub groups: Vec<EndpointGroup>,
}

impl UrlSet {
    /// Parses a URL set (see the module docs for the grammar).
    pub fn parse(input: &str) -> Result<UrlSet, UrlSetError> {
        let input = input.trim();
        if input.is_empty() {
            return Err(UrlSetError::Empty);
        }
        if !input.starts_with('{') {
            if input.contains('{') || input.contains('}') {
                return Err(UrlSetError::Syntax {
                    message: format!("{input:?}: a URL outside braces cannot be mixed with groups"),
                });
            }
            if input.contains(',') || input.contains('|') {
                return Err(UrlSetError::Ambiguous {
                    input: input.to_owned(),
                });
            }
            return Ok(UrlSet {
                groups: vec![EndpointGroup {
                    mode: GroupMode::RoundRobin,
                    members: vec![parse_url(input)?],
                }],
            });
        }
        let mut groups = Vec::new();
        let mut rest = input;
        loop {
            let Some(after_open) = rest.strip_prefix('{') else {
                return Err(UrlSetError::Syntax {
                    message: format!("expected '{{' at {rest:?}"),
                });
            };
            let Some(close) = after_open.find('}') else {
                return Err(UrlSetError::Syntax {
                    message: format!("unclosed '{{' in {input:?}"),
                });
            };
            let body = &after_open[..close];
            if body.contains('{') {
                return Err(UrlSetError::Syntax {
                    message: format!("nested '{{' in {input:?}"),
                });
            }
            groups.push(parse_group(body, groups.len() + 1)?);
            rest = after_open[close + 1..].trim_start();
            if rest.is_empty() {
                break;
            }
            let Some(next) = rest.strip_prefix(',') else {
                return Err(UrlSetError::Syntax {
                    message: format!("expected ',' between groups, found {rest:?}"),
                });
            };
            rest = next.trim_start();
            if rest.is_empty() {
                return Err(UrlSetError::Syntax {
                    message: format!("trailing ',' after the last group in {input:?}"),
                });
            }
        }
        Ok(UrlSet { groups })
    }

    /// Every endpoint, group by group.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.groups.iter().flat_map(|g| g.members.iter())
    }
}

impl FromStr for UrlSet {
    type Err = UrlSetError;

    fn from_str(s: &str) -> Result<UrlSet, UrlSetError> {
        UrlSet::parse(s)
    }
}

impl fmt::Display for UrlSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, g) in self.groups.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let sep = match g.mode {
                GroupMode::RoundRobin => ",",
                GroupMode::Failover => "|",
            };
            f.write_str("{")?;
            for (j, m) in g.members.iter().enumerate() {
                if j > 0 {
                    f.write_str(sep)?;
                }
                write!(f, "{m}")?;
            }
            f.write_str("}")?;
        }
        Ok(())
    }
}

fn parse_group(body: &str, group: usize) -> Result<EndpointGroup, UrlSetError> {
    let has_comma = body.contains(',');
    let has_pipe = body.contains('|');
    if has_comma && has_pipe {
        return Err(UrlSetError::MixedSeparators { group });
    }
    let (mode, sep) = if has_pipe {
        (GroupMode::Failover, '|')
    } else {
        (GroupMode::RoundRobin, ',')
    };
    let mut members = Vec::new();
    for (i, part) in body.split(sep).enumerate() {
        let part = part.trim();
        if part.is_empty() {
            return Err(UrlSetError::EmptyMember {
                group,
                member: i + 1,
            });
        }
        members.push(parse_url(part)?);
    }
    Ok(EndpointGroup { mode, members })
}

fn parse_url(url: &str) -> Result<Endpoint, UrlSetError> {
    let url = url.trim();
    let bad = |reason: &str| UrlSetError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(bad("expected scheme://host:port"));
    };
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "tcp" => Scheme::Tcp,
        "tls" | "ssl" => Scheme::Tls,
        _ => {
            return Err(UrlSetError::BadScheme {
                url: url.to_owned(),
                scheme: scheme.to_owned(),
            });
        }
    };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let Some((host, after)) = v6.split_once(']') else {
            return Err(bad("unclosed '[' in the host"));
        };
        let Some(port) = after.strip_prefix(':') else {
            return Err(bad("missing :port"));
        };
        (host, port)
    } else {
        let Some((host, port)) = rest.rsplit_once(':') else {
            return Err(bad("missing :port"));
        };
        if host.contains(':') {
            return Err(bad("an IPv6 host must be written in brackets: [::1]"));
        }
        (host, port)
    };
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || "/?#@{}|,".contains(c))
    {
        return Err(bad("invalid character in the host"));
    }
    let port = match port.parse::<u16>() {
        Ok(0) | Err(_) => {
            return Err(UrlSetError::BadPort {
                url: url.to_owned(),
                port: port.to_owned(),
            });
        }
        Ok(p) => p,
    };
    Ok(Endpoint {
        scheme,
        host: host.to_owned(),
        port,
    })
}

/// What the balancer needs to know about one member of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemberView {
    /// Connected, handshaken and not draining.
    pub(crate) healthy: bool,
    /// Its in-flight window has room for one more batch.
    pub(crate) has_room: bool,
}

/// Where a round-robin group's next batch goes: `member`, which has had `taken` batches of its
/// turn so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Cursor {
    pub(crate) member: usize,
    pub(crate) taken: usize,
}

/// Chooses the member of a group to send the next batch to, or `None` to wait.
///
/// - Round-robin, in turns of `turn` batches (starting at a random member, see the dispatcher):
///   the member whose turn it is (`cursor.member`) if it
///   is healthy and has room, else the next one that is, whose turn then begins; after `turn`
///   batches the turn passes to the next member. A turn keeps consecutive batches — which
///   usually hold neighbouring event times — on one worker, so fewer time buckets are written
///   by two shards (see `PublisherBuilder::batches_per_turn`); with `turn` 1 it is plain
///   round-robin.
/// - Failover: the first healthy member in written order; if its window is full, wait (never
///   spill over to the next one while the first is healthy).
///
/// `avoid` is the member a re-sent batch failed on: it is chosen only when no other member is
/// healthy.
pub(crate) fn pick(
    mode: GroupMode,
    members: &[MemberView],
    cursor: &mut Cursor,
    turn: usize,
    avoid: Option<usize>,
) -> Option<usize> {
    let n = members.len();
    if n == 0 {
        return None;
    }
    let others_healthy = |skip: usize| {
        members
            .iter()
            .enumerate()
            .any(|(i, m)| i != skip && m.healthy)
    };
    let usable = |i: usize| -> bool {
        let m = members[i];
        m.healthy && !(Some(i) == avoid && others_healthy(i))
    };
    match mode {
        GroupMode::RoundRobin => {
            for step in 0..n {
                let i = (cursor.member + step) % n;
                if usable(i) && members[i].has_room {
                    // Out of turn (`i` is not the cursor's member), `i`'s own turn begins.
                    let taken = if i == cursor.member {
                        cursor.taken + 1
                    } else {
                        1
                    };
                    *cursor = if taken >= turn {
                        Cursor {
                            member: (i + 1) % n,
                            taken: 0,
                        }
                    } else {
                        Cursor { member: i, taken }
                    };
                    return Some(i);
                }
            }
            None
        }
        GroupMode::Failover => {
            let first = (0..n).find(|&i| usable(i))?;
            members[first].has_room.then_some(first)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(host: &str, port: u16) -> Endpoint {
        Endpoint {
            scheme: Scheme::Tcp,
            host: host.into(),
            port,
        }
    }

    #[test]
    fn bare_url_is_one_group_of_one() {
        let set = UrlSet::parse(" tcp://127.0.0.1:9611 ").unwrap();
        assert_eq!(
            set.groups,
            vec![EndpointGroup {
                mode: GroupMode::RoundRobin,
                members: vec![ep("127.0.0.1", 9611)]
            }]
        );
    }

    #[test]
    fn round_robin_group() {
        let set = UrlSet::parse("{tcp://a:1, tcp://b:2,tcp://c:3}").unwrap();
        assert_eq!(set.groups.len(), 1);
        assert_eq!(set.groups[0].mode, GroupMode::RoundRobin);
        assert_eq!(
            set.groups[0].members,
            vec![ep("a", 1), ep("b", 2), ep("c", 3)]
        );
        assert_eq!(set.to_string(), "{tcp://a:1,tcp://b:2,tcp://c:3}");
    }

    #[test]
    fn failover_group() {
        let set = UrlSet::parse("{tcp://a:1|tcp://b:2}").unwrap();
        assert_eq!(set.groups[0].mode, GroupMode::Failover);
        assert_eq!(set.groups[0].members, vec![ep("a", 1), ep("b", 2)]);
        assert_eq!(set.to_string(), "{tcp://a:1|tcp://b:2}");
    }

    #[test]
    fn several_groups() {
        let set =
            UrlSet::parse("{tcp://a:1|tcp://b:2}, {tcp://c:3,tcp://d:4},{tcp://e:5}").unwrap();
        let modes: Vec<_> = set.groups.iter().map(|g| g.mode).collect();
        assert_eq!(
            modes,
            vec![
                GroupMode::Failover,
                GroupMode::RoundRobin,
                GroupMode::RoundRobin
            ]
        );
        assert_eq!(set.endpoints().count(), 5);
    }

    #[test]
    fn tls_ssl_and_ipv6() {
        let set = UrlSet::parse("{tls://h:1,ssl://[::1]:2,TCP://H:3}").unwrap();
        let m = &set.groups[0].members;
        assert_eq!(m[0].scheme, Scheme::Tls);
        assert_eq!(m[1].scheme, Scheme::Tls);
        assert_eq!(m[1].host, "::1");
        assert_eq!(m[1].authority(), "[::1]:2");
        assert_eq!(m[2].scheme, Scheme::Tcp);
        assert_eq!(m[2].to_string(), "tcp://H:3");
    }

    #[test]
    fn malformed_sets_are_clear_errors() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("   ", "empty"),
            (
                "{tcp://a:1,tcp://b:2|tcp://c:3}",
                "group 1 mixes ',' (round-robin) and '|'",
            ),
            ("{tcp://a:1,,tcp://b:2}", "member 2 of group 1 is empty"),
            ("{}", "member 1 of group 1 is empty"),
            ("{tcp://a:1|}", "member 2 of group 1 is empty"),
            ("{tcp://a:1},", "trailing ','"),
            ("{tcp://a:1}{tcp://b:2}", "expected ','"),
            ("{tcp://a:1", "unclosed"),
            ("{{tcp://a:1}}", "nested"),
            ("tcp://a:1,tcp://b:2", "ambiguous"),
            ("tcp://a:1|tcp://b:2", "ambiguous"),
            ("tcp://a:1,{tcp://b:2}", "cannot be mixed"),
            ("http://a:1", "unsupported scheme \"http\""),
            ("a:1", "expected scheme://host:port"),
            ("tcp://a", "missing :port"),
            ("tcp://a:", "bad port \"\""),
            ("tcp://a:0", "bad port \"0\""),
            ("tcp://a:65536", "bad port \"65536\""),
            ("tcp://a:x1", "bad port \"x1\""),
            ("tcp://:1", "missing host"),
            ("tcp://::1:5", "brackets"),
            ("tcp://[::1:5", "unclosed '['"),
            ("tcp://a/b:1", "invalid character"),
        ];
        for (input, want) in cases {
            let err = UrlSet::parse(input).expect_err(input).to_string();
            assert!(
                err.contains(want),
                "{input:?}: error {err:?} should mention {want:?}"
            );
        }
    }

    fn views(spec: &[(bool, bool)]) -> Vec<MemberView> {
        spec.iter()
            .map(|&(healthy, has_room)| MemberView { healthy, has_room })
            .collect()
    }

    #[test]
    fn round_robin_is_even_over_healthy_members() {
        let members = views(&[(true, true), (false, true), (true, true), (true, true)]);
        let mut cursor = Cursor::default();
        let mut counts = [0usize; 4];
        for _ in 0..300 {
            let i = pick(GroupMode::RoundRobin, &members, &mut cursor, 1, None).unwrap();
            counts[i] += 1;
        }
        assert_eq!(counts, [100, 0, 100, 100]);
    }

    #[test]
    fn round_robin_turns_give_each_member_that_many_batches_in_a_row() {
        let members = views(&[(true, true), (false, true), (true, true), (true, true)]);
        let mut cursor = Cursor::default();
        let order: Vec<usize> = (0..24)
            .map(|_| pick(GroupMode::RoundRobin, &members, &mut cursor, 3, None).unwrap())
            .collect();
        let expected: Vec<usize> = [0, 2, 3, 0, 2, 3, 0, 2]
            .iter()
            .flat_map(|&i| [i; 3])
            .collect();
        assert_eq!(order, expected);
    }

    /// A round-robin pick, then where the cursor stands: `(choice, (member, taken))`.
    fn rr(
        members: &[MemberView],
        cursor: &mut Cursor,
        turn: usize,
        avoid: Option<usize>,
    ) -> (Option<usize>, (usize, usize)) {
        let choice = pick(GroupMode::RoundRobin, members, cursor, turn, avoid);
        (choice, (cursor.member, cursor.taken))
    }

    #[test]
    fn a_full_or_failed_member_ends_its_turn_early() {
        let mut cursor = Cursor::default();
        let open = views(&[(true, true), (true, true)]);
        assert_eq!(rr(&open, &mut cursor, 4, None), (Some(0), (0, 1)));
        assert_eq!(rr(&open, &mut cursor, 4, None), (Some(0), (0, 2)));
        // Member 0's window fills: the next batch goes to 1, whose full turn begins.
        let first_full = views(&[(true, false), (true, true)]);
        assert_eq!(rr(&first_full, &mut cursor, 4, None), (Some(1), (1, 1)));
        assert_eq!(rr(&open, &mut cursor, 4, None), (Some(1), (1, 2)));
        assert_eq!(rr(&open, &mut cursor, 4, None), (Some(1), (1, 3)));
        assert_eq!(rr(&open, &mut cursor, 4, None), (Some(1), (0, 0)));
        // A re-sent batch that avoids member 0 goes to 1 and starts 1's turn, as any batch a
        // member takes out of turn does.
        assert_eq!(rr(&open, &mut cursor, 4, Some(0)), (Some(1), (1, 1)));
        // Member 1 goes down mid-turn: 0 takes over.
        let second_down = views(&[(true, true), (false, true)]);
        assert_eq!(rr(&second_down, &mut cursor, 4, None), (Some(0), (0, 1)));
    }

    #[test]
    fn round_robin_skips_full_windows_and_waits_when_all_full() {
        let members = views(&[(true, false), (true, true), (true, false)]);
        let mut cursor = Cursor::default();
        assert_eq!(rr(&members, &mut cursor, 1, None), (Some(1), (2, 0)));
        let full = views(&[(true, false), (true, false)]);
        assert_eq!(rr(&full, &mut cursor, 1, None), (None, (2, 0)));
        let down = views(&[(false, true), (false, true)]);
        assert_eq!(rr(&down, &mut cursor, 1, None), (None, (2, 0)));
    }

    #[test]
    fn failover_takes_the_first_healthy_member_in_order() {
        let mut cursor = Cursor::default();
        let members = views(&[(true, true), (true, true), (true, true)]);
        for _ in 0..5 {
            assert_eq!(
                pick(GroupMode::Failover, &members, &mut cursor, 1, None),
                Some(0)
            );
        }
        let members = views(&[(false, true), (true, true), (true, true)]);
        assert_eq!(
            pick(GroupMode::Failover, &members, &mut cursor, 1, None),
            Some(1)
        );
        // The first healthy member's window is full: wait rather than spill over.
        let members = views(&[(false, true), (true, false), (true, true)]);
        assert_eq!(
            pick(GroupMode::Failover, &members, &mut cursor, 1, None),
            None
        );
    }

    #[test]
    fn a_resent_batch_avoids_the_member_it_failed_on_while_another_is_healthy() {
        let mut cursor = Cursor::default();
        let members = views(&[(true, true), (true, true)]);
        for _ in 0..4 {
            assert_eq!(
                pick(GroupMode::RoundRobin, &members, &mut cursor, 1, Some(0)),
                Some(1)
            );
        }
        assert_eq!(
            pick(GroupMode::Failover, &members, &mut cursor, 1, Some(0)),
            Some(1)
        );
        // Another member is healthy but full: wait for it rather than going back.
        let members = views(&[(true, true), (true, false)]);
        assert_eq!(
            pick(GroupMode::RoundRobin, &members, &mut cursor, 1, Some(0)),
            None
        );
        // It is the only healthy one left: it is used.
        let members = views(&[(true, true), (false, true)]);
        assert_eq!(
            pick(GroupMode::RoundRobin, &members, &mut cursor, 1, Some(0)),
            Some(0)
        );
    }
}
