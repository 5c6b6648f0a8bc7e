//! The whole directory at once, for the sync worker: every user and group under the configured
//! bases, read with paged searches (RFC 2696) on one connection, nesting resolved in memory.
//!
//! Reading every group with its member list costs one paged search, and then no query per user
//! or per nesting level at all: a user's groups are the groups that name it, and the groups
//! that name those, up to `groups.max_depth` levels, as a login resolves them. A member list
//! Active Directory sends in ranges (`member;range=0-1499`, its MaxValRange) is read to its
//! end. Any search that fails, or ends with anything but success (a size or time limit, a
//! referral, a connection lost mid-read), fails the whole read: a snapshot is complete or it is
//! an error, never silently short.

use std::collections::{BTreeMap, HashMap};

use idbridge_core::{DirectoryError, DirectoryStatus};
use ldap3::adapters::{Adapter, PagedResults};
use ldap3::{Ldap, LdapError, Scope, SearchEntry};

use crate::config::{DirectGroups, NestedGroups, Preset};
use crate::{LdapDirectory, all, binary, first};

/// One user of a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotUser {
    /// The entry's stable id (`entryUUID`, or `objectGUID` as text).
    pub id: String,
    /// The account name attribute's value, as the directory spells it.
    pub name: String,
    /// The entry's DN.
    pub dn: String,
    /// Whether the entry may log in.
    pub status: DirectoryStatus,
    /// Indexes into [`Snapshot::groups`]: every group of the user, nested ones included,
    /// sorted; for an active entry only (as a login sees it).
    pub groups: Vec<u32>,
}

/// One group of a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotGroup {
    /// The entry's DN.
    pub dn: String,
    /// The group name attribute's value (before shaping).
    pub name: String,
}

/// What tells one directory from another, compared between runs: a directory that was
/// replaced or restored from a backup must not be read as "every user was deleted".
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct DirectoryIdentity {
    /// The configured server URLs, sorted.
    pub urls: Vec<String>,
    /// The bind DN searches run as.
    pub bind_dn: String,
    /// The user search base.
    pub user_base: String,
    /// The group search base.
    pub group_base: String,
    /// The stable id of the user base entry itself (a rebuilt directory has a new one).
    pub base_id: Option<String>,
    /// Active Directory: the DC that answered (its `dsServiceName`) and that DC's database
    /// `invocationID`, which changes when the DC is restored from a backup.
    pub invocation: Option<(String, String)>,
}

/// Every user and group the configured bases and filters hold.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Users, in the order the directory sent them.
    pub users: Vec<SnapshotUser>,
    /// Groups, in the order the directory sent them.
    pub groups: Vec<SnapshotGroup>,
    /// The directory read.
    pub identity: DirectoryIdentity,
    /// Entries that could not be used (no id, no name), each saying why; they are left out
    /// of `users`, and the sync worker leaves their accounts alone.
    pub skipped: Vec<String>,
    /// Stable ids of the users in `skipped` that have one: their entries exist, so their
    /// accounts are not to be taken as deleted.
    pub unusable_ids: Vec<String>,
    /// How many user entries came without their stable id: which accounts they are is not
    /// known, so none is to be taken as deleted while there are any.
    pub users_without_id: usize,
    /// How many searches the read took, ranged member reads included.
    pub searches: u64,
}

impl Snapshot {
    /// The names of a user's groups.
    pub fn group_names<'a>(&'a self, user: &'a SnapshotUser) -> impl Iterator<Item = &'a str> {
        user.groups
            .iter()
            .map(|&g| self.groups[g as usize].name.as_str())
    }
}

/// The phase a snapshot read is in, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPhase {
    /// Reading group entries.
    Groups,
    /// Reading user entries.
    Users,
}

/// Where a read reports its progress: the phase, and entries read so far in it.
pub type Progress<'a> = &'a (dyn Fn(ReadPhase, u64) + Send + Sync);

/// An attribute of `e` sent in ranges: its values so far and the next range's start, `None`
/// when this was the last range (or the attribute was not ranged).
fn ranged(e: &SearchEntry, attr: &str) -> Option<(Vec<String>, Option<u64>)> {
    let prefix = format!("{};range=", attr.to_ascii_lowercase());
    let (key, values) = e
        .attrs
        .iter()
        .find(|(k, _)| k.to_ascii_lowercase().starts_with(&prefix))?;
    let range = &key[prefix.len()..];
    let (_, end) = range.split_once('-')?;
    let next = if end == "*" {
        None
    } else {
        Some(end.parse::<u64>().ok()? + 1)
    };
    Some((values.clone(), next))
}

/// What one paged search reads, and how it reports.
struct Search<'a> {
    base: &'a str,
    filter: &'a str,
    attrs: Vec<String>,
    /// Which search, and so which fields, for its errors.
    what: String,
    /// The progress phase it reports under, every 1,000 entries and at its end.
    phase: ReadPhase,
}

/// A paged subtree search, every entry of it or an error.
///
/// A referral (part of the tree held by another server) is a short read, and fails it, unless
/// `referrals_are_partitions`: Active Directory answers a search of the domain's root with
/// references to its own application partitions (DNS zones, configuration), which hold no users
/// or groups of the domain.
async fn paged(
    ldap: &mut Ldap,
    search: Search<'_>,
    (page, timeout): (i32, std::time::Duration),
    referrals_are_partitions: bool,
    progress: Progress<'_>,
    mut each: impl FnMut(SearchEntry),
) -> Result<(), LdapError> {
    let Search {
        base,
        filter,
        attrs,
        what,
        phase,
    } = search;
    let adapters: Vec<Box<dyn Adapter<_, _>>> = vec![Box::new(PagedResults::new(page))];
    let read = async {
        let mut stream = ldap
            .with_timeout(timeout)
            .streaming_search_with(adapters, base, Scope::Subtree, filter, attrs)
            .await?;
        let (mut n, mut referrals) = (0u64, 0usize);
        while let Some(entry) = stream.next().await? {
            if entry.is_intermediate() {
                continue;
            }
            if entry.is_ref() {
                referrals += 1;
                continue;
            }
            each(SearchEntry::construct(entry));
            n += 1;
            if n.is_multiple_of(1000) {
                progress(phase, n);
            }
        }
        if referrals > 0 && !referrals_are_partitions {
            let _ = stream.finish().await;
            return Err(LdapError::AdapterInit(format!(
                "the directory answered with {referrals} referral(s): part of the tree under {base} is held by another server and was not read, and sync refuses a partial directory"
            )));
        }
        // Anything but success (a size limit, a time limit, an unavailable server) is a short
        // read.
        stream.finish().await.success()?;
        progress(phase, n);
        Ok(())
    };
    read.await.map_err(|e| in_search(e, &what))
}

/// A search's refusal, saying which search (and so which field) it was; a broken connection is
/// kept as it is, for the pool to replace it and start over.
fn in_search(e: LdapError, what: &str) -> LdapError {
    match e {
        LdapError::LdapResult { result } => {
            LdapError::AdapterInit(format!("{what}: {}", LdapError::LdapResult { result }))
        }
        other => other,
    }
}

/// One base-scope read of `attrs` of `dn`.
async fn read_entry(
    ldap: &mut Ldap,
    dn: &str,
    attrs: Vec<String>,
    timeout: std::time::Duration,
) -> Result<Option<SearchEntry>, LdapError> {
    let (entries, _) = ldap
        .with_timeout(timeout)
        .search(dn, Scope::Base, "(objectClass=*)", attrs)
        .await?
        .success()?;
    Ok(entries
        .into_iter()
        .filter(|e| !e.is_ref())
        .map(SearchEntry::construct)
        .next())
}

/// A group as read: its DN, name and every member.
struct RawGroup {
    dn: String,
    name: Option<String>,
    members: Vec<String>,
}

/// A user as read, kept small (a directory of 100,000 users is held whole): what the
/// snapshot needs of the entry, decoded as it arrives.
struct RawUser {
    dn: String,
    id: Option<String>,
    name: Option<String>,
    status: DirectoryStatus,
    member_of: Vec<String>,
}

/// What one read of the directory found, before nesting is resolved.
struct Raw {
    groups: Vec<RawGroup>,
    users: Vec<RawUser>,
    base_id: Option<String>,
    invocation: Option<(String, String)>,
    searches: u64,
}

impl LdapDirectory {
    /// Reads every user and group under the configured bases (see the module docs): complete,
    /// or an error. `progress` is told the phase and the entries read so far.
    ///
    /// # Errors
    /// [`DirectoryError::Unavailable`] when no server answers, [`DirectoryError::Failed`] when a
    /// search fails or is cut short.
    pub async fn snapshot(&self, progress: Progress<'_>) -> Result<Snapshot, DirectoryError> {
        let raw = self.read_raw(progress).await?;
        Ok(self.resolve(raw))
    }

    async fn read_raw(&self, progress: Progress<'_>) -> Result<Raw, DirectoryError> {
        let c = &self.cfg;
        let t = self.op_timeout;
        let group_attrs = vec![c.group_name_attribute.clone(), c.member_attribute.clone()];
        let mut user_attrs = self.user_attrs();
        if !user_attrs
            .iter()
            .any(|a| a.eq_ignore_ascii_case("memberOf"))
            && c.direct == DirectGroups::MemberOf
        {
            user_attrs.push("memberOf".into());
        }
        // The whole read runs on one connection: paging cookies belong to it, and one server
        // gives one consistent picture. A connection that breaks is replaced and the read
        // starts over.
        let me = self;
        self.search
            .run(|mut ldap: Ldap| {
                let (group_attrs, user_attrs) = (group_attrs.clone(), user_attrs.clone());
                async move {
                    let mut searches = 0u64;
                    let mut groups = Vec::new();
                    let ad = c.preset == Preset::ActiveDirectory;
                    let groups_search = Search {
                        base: &c.group_base,
                        filter: &c.group_filter,
                        attrs: group_attrs,
                        what: format!(
                            "the groups under {} (`directory.groups.base`, `filter`)",
                            c.group_base
                        ),
                        phase: ReadPhase::Groups,
                    };
                    paged(&mut ldap, groups_search, (c.page_size, t), ad, progress, |e| {
                        groups.push(e);
                    })
                    .await?;
                    searches += 1;
                    // Member lists sent in ranges, read to their end.
                    let mut with_members = Vec::with_capacity(groups.len());
                    for g in groups {
                        let mut members = all(&g, &c.member_attribute);
                        if let Some((mut got, mut next)) = ranged(&g, &c.member_attribute) {
                            members.append(&mut got);
                            while let Some(start) = next {
                                let attr = format!("{};range={start}-*", c.member_attribute);
                                searches += 1;
                                let Some(more) =
                                    read_entry(&mut ldap, &g.dn, vec![attr], t).await?
                                else {
                                    return Err(LdapError::AdapterInit(format!(
                                        "group {} vanished while its members were read",
                                        g.dn
                                    )));
                                };
                                let Some((mut got, n)) = ranged(&more, &c.member_attribute) else {
                                    return Err(LdapError::AdapterInit(format!(
                                        "group {}: the directory stopped sending its member ranges",
                                        g.dn
                                    )));
                                };
                                members.append(&mut got);
                                // A range that does not move on would never end.
                                if n.is_some_and(|n| n <= start) {
                                    return Err(LdapError::AdapterInit(format!(
                                        "group {}: the directory sent a member range that does not advance",
                                        g.dn
                                    )));
                                }
                                next = n;
                            }
                        }
                        let name = first(&g, &c.group_name_attribute);
                        with_members.push(RawGroup {
                            dn: g.dn,
                            name,
                            members,
                        });
                    }
                    let mut users = Vec::new();
                    let users_search = Search {
                        base: &c.user_base,
                        filter: &c.user_filter,
                        attrs: user_attrs,
                        what: format!(
                            "the users under {} (`directory.users.base`, `filter`)",
                            c.user_base
                        ),
                        phase: ReadPhase::Users,
                    };
                    paged(&mut ldap, users_search, (c.page_size, t), ad, progress, |e| {
                        users.push(RawUser {
                            id: me.stable_id(&e),
                            name: first(&e, &c.name_attribute),
                            status: me.status(&e),
                            member_of: if c.direct == DirectGroups::MemberOf {
                                all(&e, "memberOf")
                            } else {
                                Vec::new()
                            },
                            dn: e.dn,
                        });
                    })
                    .await?;
                    searches += 1;
                    let id_attr = c.id_attribute.clone();
                    let base = read_entry(&mut ldap, &c.user_base, vec![id_attr], t)
                        .await?
                        .and_then(|b| me.stable_id(&b));
                    searches += 1;
                    let invocation = if ad {
                        searches += 2;
                        invocation_id(&mut ldap, t).await?
                    } else {
                        None
                    };
                    Ok(Raw {
                        groups: with_members,
                        users,
                        base_id: base,
                        invocation,
                        searches,
                    })
                }
            })
            .await
    }

    /// Users and groups with nesting resolved.
    fn resolve(&self, raw: Raw) -> Snapshot {
        let c = &self.cfg;
        let mut skipped = Vec::new();
        let mut groups = Vec::with_capacity(raw.groups.len());
        let mut group_at: HashMap<String, u32> = HashMap::with_capacity(raw.groups.len());
        for g in &raw.groups {
            let Some(name) = g.name.clone().filter(|n| !n.is_empty()) else {
                skipped.push(format!(
                    "group {}: no `{}` (field `directory.groups.name_attribute`)",
                    g.dn, c.group_name_attribute
                ));
                continue;
            };
            group_at.insert(g.dn.to_lowercase(), groups.len() as u32);
            groups.push(SnapshotGroup {
                dn: g.dn.clone(),
                name,
            });
        }
        // Who names whom: the groups a group is directly in, and a user's direct groups.
        let mut parents: Vec<Vec<u32>> = vec![Vec::new(); groups.len()];
        let mut direct_of: HashMap<String, Vec<u32>> = HashMap::new();
        for g in &raw.groups {
            let Some(&gi) = group_at.get(&g.dn.to_lowercase()) else {
                continue;
            };
            for m in &g.members {
                let m = m.to_lowercase();
                match group_at.get(&m) {
                    Some(&child) => parents[child as usize].push(gi),
                    None => direct_of.entry(m).or_default().push(gi),
                }
            }
        }
        // Each group's ancestors within the depth a login follows, computed once per group.
        let levels = match c.nested {
            NestedGroups::None => 0,
            _ => c.max_depth.saturating_sub(1),
        };
        let mut above: Vec<Option<Vec<u32>>> = vec![None; groups.len()];
        let mut users = Vec::with_capacity(raw.users.len());
        let mut unusable_ids = Vec::new();
        let mut users_without_id = 0;
        for u in raw.users {
            let Some(id) = u.id else {
                users_without_id += 1;
                skipped.push(format!(
                    "user {}: no `{}` (field `directory.users.id_attribute`)",
                    u.dn, c.id_attribute
                ));
                continue;
            };
            let Some(name) = u.name.filter(|n| !n.is_empty()) else {
                unusable_ids.push(id);
                skipped.push(format!(
                    "user {}: no `{}` (field `directory.users.name_attribute`)",
                    u.dn, c.name_attribute
                ));
                continue;
            };
            let status = u.status;
            let mut mine: Vec<u32> = Vec::new();
            if status == DirectoryStatus::Active {
                let mut direct: Vec<u32> =
                    direct_of.remove(&u.dn.to_lowercase()).unwrap_or_default();
                direct.extend(
                    u.member_of
                        .iter()
                        .filter_map(|dn| group_at.get(&dn.to_lowercase()).copied()),
                );
                for d in direct {
                    mine.push(d);
                    let up =
                        above[d as usize].get_or_insert_with(|| ancestors(&parents, d, levels));
                    mine.extend_from_slice(up);
                }
                mine.sort_unstable();
                mine.dedup();
            }
            users.push(SnapshotUser {
                id,
                name,
                dn: u.dn,
                status,
                groups: mine,
            });
        }
        let mut urls = self.urls.clone();
        urls.sort();
        Snapshot {
            users,
            groups,
            identity: DirectoryIdentity {
                urls,
                bind_dn: self.bind_dn.clone(),
                user_base: c.user_base.clone(),
                group_base: c.group_base.clone(),
                base_id: raw.base_id,
                invocation: raw.invocation,
            },
            skipped,
            unusable_ids,
            users_without_id,
            searches: raw.searches,
        }
    }

    /// The names of groups as tokens carry them (`groups.include`, `exclude` and `prefix`
    /// applied; not `groups.max`, which caps a token, not a directory): what RoleBindings and
    /// rules name.
    #[must_use]
    pub fn token_group_names<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let names: Vec<String> = names.into_iter().map(str::to_owned).collect();
        self.shaping.names(&names)
    }

    /// The names of the groups tokens carry, as the directory spells them (`groups.include`
    /// and `exclude` applied, no prefix): what account labels show.
    #[must_use]
    pub fn kept_group_names<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let prefix = &self.shaping.prefix;
        self.token_group_names(names)
            .into_iter()
            .map(|n| n.strip_prefix(prefix.as_str()).unwrap_or(&n).to_owned())
            .collect()
    }
}

/// The groups `g` is in, nested, within `levels` levels above it (a cycle ends where it
/// comes back).
fn ancestors(parents: &[Vec<u32>], g: u32, levels: usize) -> Vec<u32> {
    let mut seen = std::collections::HashSet::from([g]);
    let mut out = Vec::new();
    let mut frontier = vec![g];
    for _ in 0..levels {
        let mut next = Vec::new();
        for f in frontier {
            for &p in &parents[f as usize] {
                if seen.insert(p) {
                    out.push(p);
                    next.push(p);
                }
            }
        }
        if next.is_empty() {
            break;
        }
        frontier = next;
    }
    out
}

/// Active Directory: the DC that answers and its database's `invocationID`.
async fn invocation_id(
    ldap: &mut Ldap,
    t: std::time::Duration,
) -> Result<Option<(String, String)>, LdapError> {
    let Some(root) = read_entry(ldap, "", vec!["dsServiceName".into()], t).await? else {
        return Ok(None);
    };
    let Some(service) = first(&root, "dsServiceName") else {
        return Ok(None);
    };
    let Some(settings) = read_entry(ldap, &service, vec!["invocationId".into()], t).await? else {
        return Ok(None);
    };
    Ok(binary(&settings, "invocationId")
        .first()
        .and_then(|b| crate::ad::guid_to_string(b))
        .map(|id| (service, id)))
}

/// How many users are in each group, by group name: for reports.
#[must_use]
pub fn members_per_group(s: &Snapshot) -> BTreeMap<&str, usize> {
    let mut out = BTreeMap::new();
    for u in &s.users {
        for name in s.group_names(u) {
            *out.entry(name).or_insert(0) += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dn: &str, attrs: &[(&str, &[&str])]) -> SearchEntry {
        SearchEntry {
            dn: dn.into(),
            attrs: attrs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.iter().map(|s| (*s).to_owned()).collect()))
                .collect(),
            bin_attrs: HashMap::new(),
        }
    }

    #[test]
    fn ranged_member_lists_say_where_the_next_range_starts() {
        let e = entry("cn=g", &[("member;range=0-1499", &["a", "b"])]);
        assert_eq!(
            ranged(&e, "member"),
            Some((vec!["a".into(), "b".into()], Some(1500)))
        );
        let last = entry("cn=g", &[("Member;Range=1500-*", &["c"])]);
        assert_eq!(ranged(&last, "member"), Some((vec!["c".into()], None)));
        assert_eq!(
            ranged(&entry("cn=g", &[("member", &["a"])]), "member"),
            None
        );
    }

    #[test]
    fn ancestors_stop_at_the_depth_and_at_cycles() {
        // 0 in 1, 1 in 2, 2 in 0 (a cycle), 2 in 3.
        let parents = vec![vec![1], vec![2], vec![0, 3], vec![]];
        let mut a = ancestors(&parents, 0, 10);
        a.sort_unstable();
        assert_eq!(a, [1, 2, 3]);
        assert_eq!(ancestors(&parents, 0, 1), [1]);
        assert!(ancestors(&parents, 0, 0).is_empty());
    }
}
