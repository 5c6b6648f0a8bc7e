//! The account plan: what the directory says against what the store holds, as a list of
//! changes, each with its reason. Pure: no I/O, the same input gives the same plan.
//!
//! An account belongs to a directory entry by its link (the entry's `entryUUID` or
//! `objectGUID`), never by name, so a renamed user keeps the account and its UID. For each
//! entry read:
//!
//! - no linked account, the entry active: **create** one (with `create_accounts`), unless an
//!   account of that name exists that is linked elsewhere or to nothing: that is reported, and
//!   nothing is taken over;
//! - a linked account: **rename** it when the directory's name changed, **update** its labels
//!   and default namespace, **enable** it when sync had disabled it and the entry is active
//!   again, **disable** it (revoking its sessions) when the entry is disabled or expired. A
//!   locked entry (a lockout after failed passwords: temporary, and anyone can cause one) leaves
//!   its account as it is; logins and refreshes refuse it live.
//!
//! A linked account whose entry is gone is **disabled** ("deleted from the directory"); sync
//! never deletes an account. An account an administrator disabled stays disabled: sync
//! re-enables only what it disabled (the `sync.idbridge.io/disabled` label). Labels sync does
//! not own, and accounts not linked to the directory, are never touched.
//!
//! Renames are ordered so that a name one account gives up can be taken by another in the same
//! run; a name still held by an account that keeps it (or a cycle of renames) is reported and
//! that rename left for a later run, while the account's other changes go ahead.
//!
//! **Guards** (see [`crate::config::Guards`]): a directory that returned no users, more
//! disables than the configured count or share, or a directory that is not the one of the last
//! run make a plan that must not be applied without `--force`; they are listed in
//! [`Plan::trips`], whatever else the plan holds.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use idbridge_core::{
    AccountChange, AccountName, AccountUid, DirectoryStatus, ExternalIdentity, Labels, Namespace,
    NewAccount, UserAccount,
};
use serde::Serialize;

use crate::config::{DefaultNamespace, NameCase, Rules};
use crate::labels;

/// A directory user as the plan sees it, borrowed from the snapshot (a directory of 100,000
/// users is planned without copying it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The entry's stable id, the account's link.
    pub id: &'a str,
    /// The name attribute's value.
    pub name: &'a str,
    /// Whether it may log in.
    pub status: DirectoryStatus,
    /// Its groups as tokens carry them (shaped, prefix included), nested ones included: what
    /// the rules match.
    pub groups: Vec<&'a str>,
    /// The same groups as the directory names them (no prefix): what the group labels show.
    pub labelled: Vec<&'a str>,
}

/// What the plan is made from.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Every user the directory holds.
    pub entries: &'a [Entry<'a>],
    /// Ids of entries the directory holds but that could not be used (no name): their
    /// accounts are left alone, never taken as deleted.
    pub unusable_ids: &'a [String],
    /// How many entries came without an id: while there are any, no account is taken as
    /// deleted (it may be one of them).
    pub unidentified: usize,
    /// Every account in the store.
    pub accounts: &'a [UserAccount],
    /// Why the directory is not the one of the last run, if it is not.
    pub identity_change: Option<&'a str>,
}

/// What a change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A new account.
    Create,
    /// A new name (the UID stays), maybe with other changes.
    Rename,
    /// Labels or the default namespace.
    Update,
    /// Enabled again: the entry is active again after sync disabled it.
    Enable,
    /// Disabled, its sessions revoked.
    Disable,
}

impl Kind {
    /// The kind's name, as in the plan's table and JSON.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Rename => "rename",
            Self::Update => "update",
            Self::Enable => "enable",
            Self::Disable => "disable",
        }
    }
}

/// One planned change to one account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Planned {
    /// What it does.
    pub kind: Kind,
    /// The account's name after the change.
    pub account: String,
    /// Its name before, for a rename.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Its UID (none yet for a create).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<AccountUid>,
    /// Why, in words.
    pub reason: String,
    /// The store changes that carry it out, in order.
    #[serde(skip)]
    pub changes: Vec<AccountChange>,
    /// The account as the plan read it (none for a create): a change is applied only to an
    /// account still so.
    #[serde(skip)]
    pub before: Option<UserAccount>,
}

/// The whole plan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Changes, in the order they are applied: renames, updates, enables, disables, creates.
    pub changes: Vec<Planned>,
    /// Entries or changes left out, each saying why (nothing else depends on them).
    pub skipped: Vec<String>,
    /// Why this plan must not be applied without `--force`; empty when it may.
    pub trips: Vec<String>,
    /// Users the directory returned.
    pub directory_users: usize,
    /// Accounts linked to a directory entry, before the plan.
    pub linked_accounts: usize,
    /// Linked accounts the plan leaves as they are.
    pub unchanged: usize,
}

impl Plan {
    /// Drops the changes whose account is no longer as the plan read it (`now`: the accounts
    /// as stored now), and creates whose name or entry an account has taken meanwhile, each
    /// reported: a change made by an administrator or a login while sync read the directory
    /// is never overwritten, and the next run plans from it.
    pub fn keep_current(&mut self, now: &[UserAccount]) {
        let by_uid: HashMap<AccountUid, &UserAccount> = now.iter().map(|a| (a.uid, a)).collect();
        let names: std::collections::HashSet<&str> = now.iter().map(|a| a.name.as_str()).collect();
        let linked: std::collections::HashSet<&str> = now.iter().filter_map(directory_id).collect();
        let skipped = &mut self.skipped;
        self.changes.retain(|c| {
            let current = match (&c.before, c.uid) {
                (Some(before), Some(uid)) => by_uid.get(&uid).is_some_and(|a| *a == before),
                _ => c.changes.iter().all(|ch| match ch {
                    AccountChange::Create(n) => {
                        !names.contains(n.name.as_str())
                            && n.identities.iter().all(|i| match i {
                                ExternalIdentity::Directory { id } => !linked.contains(id.as_str()),
                                _ => true,
                            })
                    }
                    _ => true,
                }),
            };
            if !current {
                skipped.push(format!(
                    "{} {}: the account changed while sync read the directory; left for the next run",
                    c.kind.as_str(),
                    c.account
                ));
            }
            current
        });
    }

    /// The store changes of the whole plan, in order, for one atomic batch.
    #[must_use]
    pub fn account_changes(&self) -> Vec<AccountChange> {
        self.changes
            .iter()
            .flat_map(|p| p.changes.iter().cloned())
            .collect()
    }

    /// How many changes of each kind.
    #[must_use]
    pub fn counts(&self) -> BTreeMap<Kind, usize> {
        let mut out = BTreeMap::new();
        for c in &self.changes {
            *out.entry(c.kind).or_insert(0) += 1;
        }
        out
    }
}

fn directory_id(a: &UserAccount) -> Option<&str> {
    a.identities.iter().find_map(|i| match i {
        ExternalIdentity::Directory { id } => Some(id.as_str()),
        _ => None,
    })
}

/// The account name of a directory name.
fn account_name(name: &str, case: NameCase) -> Result<AccountName, String> {
    let name = match case {
        NameCase::Preserve => name.to_owned(),
        NameCase::Lower => name.to_lowercase(),
    };
    name.parse::<AccountName>().map_err(|e| e.to_string())
}

/// `s` made a namespace name: lower case, every other character `-`, at most 63, trimmed.
fn as_namespace(s: &str) -> Option<Namespace> {
    crate::objects::readable(s, 63).parse().ok()
}

/// The namespaces the rules give these groups, sorted.
#[must_use]
pub fn mapped_namespaces(rules: &Rules, groups: &[&str]) -> BTreeSet<Namespace> {
    let mut out = BTreeSet::new();
    for r in &rules.namespaces {
        for g in groups {
            if let Some(ns) = r.matcher.expand(g, &r.rule.namespace)
                && let Ok(ns) = ns.to_lowercase().parse::<Namespace>()
            {
                out.insert(ns);
            }
        }
    }
    out
}

/// The labels sync owns for an active entry; `keys` holds each group's label key (none for
/// groups whose keys collide).
fn owned_labels(
    rules: &Rules,
    e: &Entry<'_>,
    keys: &HashMap<&str, Option<idbridge_core::LabelKey>>,
) -> BTreeMap<idbridge_core::LabelKey, String> {
    let groups = &e.groups;
    let mut out = BTreeMap::new();
    if rules.group_labels {
        for g in &e.labelled {
            if let Some(Some(k)) = keys.get(g) {
                out.insert(k.clone(), labels::MEMBER.to_owned());
            }
        }
    }
    for (m, role) in &rules.roles {
        if groups.iter().any(|g| m.matches(g))
            && let Some(k) = labels::role_key(role)
        {
            out.insert(k, "true".to_owned());
        }
    }
    out
}

/// Whether `current`'s owned labels are exactly those [`owned_labels`] gives, without building
/// them (the usual case of a run: nothing changed).
fn same_owned(
    rules: &Rules,
    e: &Entry<'_>,
    keys: &HashMap<&str, Option<idbridge_core::LabelKey>>,
    current: &Labels,
) -> bool {
    let mut want: Vec<(&str, &str)> = Vec::with_capacity(e.labelled.len() + rules.roles.len());
    if rules.group_labels {
        for g in &e.labelled {
            if let Some(Some(k)) = keys.get(g) {
                want.push((k.as_str(), labels::MEMBER));
            }
        }
    }
    let roles: Vec<String> = rules
        .roles
        .iter()
        .filter(|(m, _)| e.groups.iter().any(|g| m.matches(g)))
        .map(|(_, role)| format!("{}{role}", labels::ROLE_PREFIX))
        .collect();
    want.extend(roles.iter().map(|k| (k.as_str(), "true")));
    want.sort_unstable();
    want.dedup();
    current
        .iter()
        .filter(|(k, _)| labels::owned(k.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .eq(want)
}

/// The account's labels with sync's own replaced by `owned`.
fn with_owned(
    current: &Labels,
    owned: BTreeMap<idbridge_core::LabelKey, String>,
    disabled_mark: Option<&str>,
) -> Labels {
    let mut out: Labels = current
        .iter()
        .filter(|(k, _)| !labels::owned(k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.extend(owned);
    if let Some(mark) = disabled_mark
        && let Ok(k) = labels::DISABLED_BY_SYNC.parse()
    {
        out.insert(k, mark.to_owned());
    }
    out
}

/// The owned labels of `current`, and the sync mark, kept as they are.
fn owned_of(current: &Labels) -> BTreeMap<idbridge_core::LabelKey, String> {
    current
        .iter()
        .filter(|(k, _)| labels::owned(k.as_str()) && k.as_str() != labels::DISABLED_BY_SYNC)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// What changed between two versions of an account, in words.
fn describe(before: &UserAccount, after: &UserAccount) -> String {
    let mut parts = Vec::new();
    let added: Vec<&str> = after
        .labels
        .iter()
        .filter(|(k, v)| before.labels.get(*k) != Some(*v))
        .map(|(k, _)| k.as_str())
        .collect();
    let removed: Vec<&str> = before
        .labels
        .keys()
        .filter(|k| !after.labels.contains_key(*k))
        .map(idbridge_core::LabelKey::as_str)
        .collect();
    if !added.is_empty() {
        parts.push(format!("labels set: {}", added.join(", ")));
    }
    if !removed.is_empty() {
        parts.push(format!("labels removed: {}", removed.join(", ")));
    }
    if before.default_namespace != after.default_namespace {
        parts.push(format!(
            "default namespace {} → {}",
            before
                .default_namespace
                .as_ref()
                .map_or("(none)", Namespace::as_str),
            after
                .default_namespace
                .as_ref()
                .map_or("(none)", Namespace::as_str)
        ));
    }
    parts.join("; ")
}

/// A change to an existing account being worked out.
struct Pending {
    before: UserAccount,
    after: UserAccount,
    kind: Kind,
    reason: String,
    /// Set for a disable: the reason recorded on each revoked session.
    revoke: Option<String>,
}

/// Makes the plan (see the module docs).
#[must_use]
pub fn plan(input: Input<'_>, rules: &Rules) -> Plan {
    let mut skipped = Vec::new();
    let by_id: HashMap<&str, &UserAccount> = input
        .accounts
        .iter()
        .filter_map(|a| directory_id(a).map(|id| (id, a)))
        .collect();
    let linked_accounts = by_id.len();
    let linked_enabled = by_id.values().filter(|a| !a.disabled).count();

    // Names the directory gives twice (after case folding) are nobody's.
    let mut names: Vec<Option<AccountName>> = Vec::with_capacity(input.entries.len());
    for e in input.entries {
        match account_name(e.name, rules.name_case) {
            Ok(n) => {
                names.push(Some(n));
            }
            Err(why) => {
                skipped.push(format!(
                    "entry {} ({:?}): not a valid account name: {why}",
                    e.id, e.name
                ));
                names.push(None);
            }
        }
    }
    let mut wanted: HashMap<&str, usize> = HashMap::with_capacity(names.len());
    for n in names.iter().flatten() {
        *wanted.entry(n.as_str()).or_insert(0) += 1;
    }
    // Each group's label key, once per group; names whose keys are equal: neither labelled.
    let mut keys: HashMap<&str, Option<idbridge_core::LabelKey>> = HashMap::new();
    if rules.group_labels {
        let mut by_key: HashMap<idbridge_core::LabelKey, BTreeSet<&str>> = HashMap::new();
        for &g in input.entries.iter().flat_map(|e| e.labelled.iter()) {
            if !keys.contains_key(g) {
                let k = labels::group_key(g);
                by_key.entry(k.clone()).or_default().insert(g);
                keys.insert(g, Some(k));
            }
        }
        let mut collisions: Vec<(&idbridge_core::LabelKey, &BTreeSet<&str>)> =
            by_key.iter().filter(|(_, g)| g.len() > 1).collect();
        collisions.sort();
        for (k, groups) in collisions {
            skipped.push(format!(
                "groups {} share the label key {k}; none of them is labelled",
                groups
                    .iter()
                    .map(|g| format!("{g:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            for g in groups {
                keys.insert(g, None);
            }
        }
    }

    let mut pending: Vec<Pending> = Vec::new();
    let mut creates: Vec<(NewAccount, String)> = Vec::new();
    let mut unchanged = 0;
    let mut present: std::collections::HashSet<&str> =
        input.unusable_ids.iter().map(String::as_str).collect();
    for (e, name) in input.entries.iter().zip(names.iter().cloned()) {
        present.insert(e.id);
        let Some(name) = name else { continue };
        if wanted.get(name.as_str()).copied().unwrap_or(0) > 1 {
            skipped.push(format!(
                "entry {}: the directory names more than one user {name}; it is left alone",
                e.id
            ));
            continue;
        }
        // A lockout (failed passwords) is temporary, and anyone can cause one: it is left to
        // logins and refreshes, which refuse a locked entry live. The account stays as it is.
        if e.status == DirectoryStatus::Locked {
            if by_id.contains_key(e.id) {
                unchanged += 1;
            }
            continue;
        }
        let active = e.status == DirectoryStatus::Active;
        let mut namespace = |current: Option<&Namespace>| -> Option<Namespace> {
            match &rules.default_namespace {
                None => current.cloned(),
                Some(DefaultNamespace::Mapped) => {
                    mapped_namespaces(rules, &e.groups).into_iter().next()
                }
                Some(DefaultNamespace::Template(t)) => {
                    let ns = as_namespace(&t.replace("{name}", name.as_str()));
                    if ns.is_none() {
                        skipped.push(format!(
                            "user {name}: the default namespace template gives no valid namespace name"
                        ));
                        return current.cloned();
                    }
                    ns
                }
            }
        };
        let Some(account) = by_id.get(e.id) else {
            if !active || !rules.create_accounts {
                continue;
            }
            let mut new = NewAccount::named(name.clone());
            new.labels = with_owned(&Labels::new(), owned_labels(rules, e, &keys), None);
            new.default_namespace = namespace(None);
            new.identities.insert(ExternalIdentity::Directory {
                id: e.id.to_owned(),
            });
            creates.push((new, format!("new in the directory (entry {})", e.id)));
            continue;
        };
        let by_sync = account
            .labels
            .keys()
            .any(|k| k.as_str() == labels::DISABLED_BY_SYNC);
        // The usual case, checked without copying the account: nothing to change.
        if active && !account.disabled && !by_sync && account.name == name {
            let same_labels = same_owned(rules, e, &keys, &account.labels);
            if same_labels
                && namespace(account.default_namespace.as_ref()) == account.default_namespace
            {
                unchanged += 1;
                continue;
            }
        }
        let before = (*account).clone();
        let mut after = before.clone();
        let (kind, reason, revoke) = if active {
            after.name = name.clone();
            after.labels = with_owned(&before.labels, owned_labels(rules, e, &keys), None);
            after.default_namespace = namespace(before.default_namespace.as_ref());
            if before.disabled && by_sync {
                after.disabled = false;
                (
                    Kind::Enable,
                    "active again in the directory".to_owned(),
                    None,
                )
            } else if before.disabled && !by_sync {
                // Disabled by an administrator: kept so, and its labels left too.
                after = before.clone();
                (Kind::Update, String::new(), None)
            } else if after.name != before.name {
                (
                    Kind::Rename,
                    format!("renamed in the directory: {} → {}", before.name, after.name),
                    None,
                )
            } else {
                (Kind::Update, describe(&before, &after), None)
            }
        } else if !before.disabled {
            let why = format!("{} in the directory", e.status);
            after.disabled = true;
            after.labels = with_owned(&before.labels, owned_of(&before.labels), Some("directory"));
            (Kind::Disable, why.clone(), Some(why))
        } else {
            (Kind::Update, String::new(), None)
        };
        if after == before {
            unchanged += 1;
            continue;
        }
        pending.push(Pending {
            before,
            after,
            kind,
            reason,
            revoke,
        });
    }
    // Linked accounts whose entry is gone; none while some entries came without an id.
    if input.unidentified > 0 {
        skipped.push(format!(
            "{} directory entries have no id, so no account is taken as deleted this run (check `directory.users.id_attribute` and the service account's read rights)",
            input.unidentified
        ));
    }
    for a in input.accounts.iter().filter(|_| input.unidentified == 0) {
        let Some(id) = directory_id(a) else { continue };
        if present.contains(id) {
            continue;
        }
        if a.disabled {
            unchanged += 1;
            continue;
        }
        let mut after = a.clone();
        after.disabled = true;
        after.labels = with_owned(&a.labels, owned_of(&a.labels), Some("deleted"));
        let why = "deleted from the directory".to_owned();
        pending.push(Pending {
            before: a.clone(),
            after,
            kind: Kind::Disable,
            reason: why.clone(),
            revoke: Some(why),
        });
    }

    // Renames, ordered so that freed names can be taken; the rest left for later.
    let mut order: Vec<usize> = Vec::new();
    let mut freed: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut waiting: Vec<usize> = pending
        .iter()
        .enumerate()
        .filter(|(_, p)| p.after.name != p.before.name)
        .map(|(i, _)| i)
        .collect();
    // Who holds which name: needed only by renames and creates.
    let mut held: HashMap<String, AccountUid> = if waiting.is_empty() && creates.is_empty() {
        HashMap::new()
    } else {
        input
            .accounts
            .iter()
            .map(|a| (a.name.as_str().to_owned(), a.uid))
            .collect()
    };
    loop {
        let before = waiting.len();
        waiting.retain(|&i| {
            let p = &pending[i];
            let free = held
                .get(p.after.name.as_str())
                .is_none_or(|&uid| uid == p.after.uid);
            if free {
                held.remove(p.before.name.as_str());
                freed.insert(p.before.name.as_str().to_owned());
                held.insert(p.after.name.as_str().to_owned(), p.after.uid);
                order.push(i);
            }
            !free
        });
        if waiting.len() == before {
            break;
        }
    }
    let waiting_uids: BTreeSet<AccountUid> =
        waiting.iter().map(|&j| pending[j].before.uid).collect();
    for &i in &waiting {
        let p = &mut pending[i];
        let cycle = held
            .get(p.after.name.as_str())
            .is_some_and(|h| waiting_uids.contains(h));
        skipped.push(format!(
            "account {} (uid {}): not renamed to {}: {}",
            p.before.name,
            p.before.uid,
            p.after.name,
            if cycle {
                "the renames form a cycle (a swap), which sync cannot make in one step: rename one of the entries in the directory to a third name, let sync run, then rename it on"
            } else {
                "an account of that name exists that is not this entry's"
            }
        ));
        p.after.name = p.before.name.clone();
        if p.kind == Kind::Rename {
            p.kind = Kind::Update;
            p.reason = describe(&p.before, &p.after);
        }
    }
    let rename_order: Vec<AccountUid> = order.iter().map(|&i| pending[i].after.uid).collect();
    pending.retain(|p| p.after != p.before);

    let mut changes: Vec<Planned> = Vec::new();
    let mut emit = |p: &Pending| {
        let mut steps = vec![AccountChange::Update(p.after.clone())];
        if let Some(why) = &p.revoke {
            steps.push(AccountChange::Disable {
                uid: p.after.uid,
                reason: why.clone(),
            });
        }
        let mut reason = p.reason.clone();
        if p.kind == Kind::Rename {
            let rest = describe(&p.before, &p.after);
            if !rest.is_empty() {
                reason = format!("{reason}; {rest}");
            }
        }
        changes.push(Planned {
            kind: p.kind,
            account: p.after.name.to_string(),
            from: (p.after.name != p.before.name).then(|| p.before.name.to_string()),
            uid: Some(p.after.uid),
            reason,
            changes: steps,
            before: Some(p.before.clone()),
        });
    };
    // Renames first, in their order, then the rest by kind.
    let at: HashMap<AccountUid, usize> = pending
        .iter()
        .enumerate()
        .map(|(i, p)| (p.after.uid, i))
        .collect();
    for uid in &rename_order {
        if let Some(&i) = at.get(uid) {
            emit(&pending[i]);
        }
    }
    for kind in [Kind::Update, Kind::Enable, Kind::Disable] {
        for p in pending
            .iter()
            .filter(|p| p.kind == kind && p.after.name == p.before.name)
        {
            emit(p);
        }
    }
    // Creates last: never on a name still held, nor on one a rename gave up in this run (the
    // renamed account's access tokens still carry it until they expire).
    for (new, reason) in creates {
        if freed.contains(new.name.as_str()) && !held.contains_key(new.name.as_str()) {
            skipped.push(format!(
                "user {} not created yet: a rename in this run gave the name up, and the renamed account's tokens still carry it; the next run creates it",
                new.name
            ));
            continue;
        }
        if let Some(uid) = held.get(new.name.as_str()) {
            skipped.push(format!(
                "user {} not created: an account of that name (uid {uid}) exists that is not linked to this entry (a local account, or the account of an entry deleted before); the user is created once that name is free (`idbridge user rename {} <another name>`)",
                new.name, new.name
            ));
            continue;
        }
        held.insert(new.name.as_str().to_owned(), AccountUid::random());
        changes.push(Planned {
            kind: Kind::Create,
            account: new.name.to_string(),
            from: None,
            uid: None,
            reason,
            changes: vec![AccountChange::Create(new)],
            before: None,
        });
    }

    // Guards.
    let mut trips = Vec::new();
    if input.entries.is_empty() {
        trips.push(
            "the directory returned no users: a wrong base, filter or service account looks just like this"
                .to_owned(),
        );
    }
    let disables = changes.iter().filter(|c| c.kind == Kind::Disable).count();
    let g = &rules.guards;
    if disables > g.max_disable_count {
        trips.push(format!(
            "{disables} accounts would be disabled, more than `sync.guards.max_disable_count` ({})",
            g.max_disable_count
        ));
    }
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    let share = if linked_enabled == 0 {
        0.0
    } else {
        disables as f64 * 100.0 / linked_enabled as f64
    };
    if disables > 0 && share > g.max_disable_percent {
        trips.push(format!(
            "{disables} of {linked_enabled} enabled directory accounts would be disabled ({share:.1} %), more than `sync.guards.max_disable_percent` ({} %)",
            g.max_disable_percent
        ));
    }
    if let Some(why) = input.identity_change {
        trips.push(format!(
            "the directory is not the one of the last run: {why}"
        ));
    }
    Plan {
        changes,
        skipped,
        trips,
        directory_users: input.entries.len(),
        linked_accounts,
        unchanged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_rules as rules;

    /// An entry; its text is leaked, as a snapshot would outlive the plan.
    fn entry(id: &str, name: &str, groups: &[&str]) -> Entry<'static> {
        let keep = |s: &str| -> &'static str { Box::leak(s.to_owned().into_boxed_str()) };
        Entry {
            id: keep(id),
            name: keep(name),
            status: DirectoryStatus::Active,
            groups: groups.iter().map(|g| keep(g)).collect(),
            labelled: groups.iter().map(|g| keep(g)).collect(),
        }
    }

    fn account(id: Option<&str>, name: &str) -> UserAccount {
        UserAccount {
            uid: AccountUid::random(),
            name: name.parse().unwrap(),
            groups: BTreeSet::new(),
            labels: Labels::new(),
            default_namespace: None,
            disabled: false,
            identities: id
                .map(|id| ExternalIdentity::Directory { id: id.into() })
                .into_iter()
                .collect(),
            created_at: idbridge_core::UnixTime(1),
        }
    }

    fn run(entries: &[Entry<'_>], accounts: &[UserAccount], r: &Rules) -> Plan {
        plan(
            Input {
                entries,
                unusable_ids: &[],
                unidentified: 0,
                accounts,
                identity_change: None,
            },
            r,
        )
    }

    /// The accounts after applying the plan, as a store would (creates get a UID).
    fn apply(accounts: &[UserAccount], p: &Plan) -> Vec<UserAccount> {
        let mut out: Vec<UserAccount> = accounts.to_vec();
        for c in p.account_changes() {
            match c {
                AccountChange::Create(n) => out.push(UserAccount {
                    uid: AccountUid::random(),
                    name: n.name,
                    groups: n.groups,
                    labels: n.labels,
                    default_namespace: n.default_namespace,
                    disabled: n.disabled,
                    identities: n.identities,
                    created_at: idbridge_core::UnixTime(2),
                }),
                AccountChange::Update(a) => {
                    let at = out.iter().position(|x| x.uid == a.uid).unwrap();
                    out[at] = a;
                }
                AccountChange::Disable { uid, .. } => {
                    out.iter_mut().find(|x| x.uid == uid).unwrap().disabled = true;
                }
            }
        }
        out
    }

    fn label<'a>(a: &'a UserAccount, key: &str) -> Option<&'a str> {
        a.labels
            .iter()
            .find(|(k, _)| k.as_str() == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn new_users_are_created_with_labels_and_a_second_run_changes_nothing() {
        let r = rules("labels: {roles: [{regex: 'k8s-.*-admins', role: admin}]}");
        let dir = [
            entry("id-a", "alice", &["dev", "k8s-pay-admins", "Domain Users"]),
            entry("id-b", "bob", &[]),
        ];
        let p = run(&dir, &[], &r);
        assert_eq!(p.counts(), BTreeMap::from([(Kind::Create, 2)]));
        assert!(p.trips.is_empty(), "{:?}", p.trips);
        let after = apply(&[], &p);
        let alice = after.iter().find(|a| a.name.as_str() == "alice").unwrap();
        assert_eq!(label(alice, "groups.idbridge.io/dev"), Some("member"));
        assert_eq!(label(alice, "roles.idbridge.io/admin"), Some("true"));
        assert!(alice.labels.keys().any(|k| {
            k.as_str()
                .starts_with("hashed.groups.idbridge.io/Domain-Users-")
        }));
        assert!(
            alice
                .identities
                .contains(&ExternalIdentity::Directory { id: "id-a".into() })
        );
        let again = run(&dir, &after, &r);
        assert!(again.changes.is_empty(), "{:?}", again.changes);
        assert_eq!(again.unchanged, 2);
    }

    #[test]
    fn a_rename_keeps_the_uid_and_membership_changes_update_labels() {
        let r = Rules::default();
        let before = apply(
            &[],
            &run(&[entry("id-a", "alice", &["dev", "ops"])], &[], &r),
        );
        let uid = before[0].uid;
        let p = run(&[entry("id-a", "alice2", &["dev"])], &before, &r);
        assert_eq!(p.changes.len(), 1);
        let c = &p.changes[0];
        assert_eq!(
            (c.kind, c.uid, c.from.as_deref()),
            (Kind::Rename, Some(uid), Some("alice"))
        );
        assert!(
            c.reason.contains("alice → alice2")
                && c.reason.contains("labels removed: groups.idbridge.io/ops"),
            "{}",
            c.reason
        );
        let after = apply(&before, &p);
        assert_eq!(after[0].uid, uid);
        assert_eq!(after[0].name.as_str(), "alice2");
        assert_eq!(label(&after[0], "groups.idbridge.io/ops"), None);
    }

    #[test]
    fn disabled_or_deleted_entries_disable_and_revoke_and_only_syncs_own_come_back() {
        let r = rules("guards: {max_disable_percent: 100}");
        let mut accounts = apply(
            &[],
            &run(
                &[entry("a", "alice", &["dev"]), entry("b", "bob", &[])],
                &[],
                &r,
            ),
        );
        // An administrator disabled carol, not linked to anything, and set a label of their own.
        let mut carol = account(None, "carol");
        carol.disabled = true;
        accounts.push(carol);
        accounts[0]
            .labels
            .insert("team".parse().unwrap(), "blue".into());
        // A lockout leaves the account as it is.
        let mut locked = entry("a", "alice", &["dev"]);
        locked.status = DirectoryStatus::Locked;
        let p = run(&[locked.clone(), entry("b", "bob", &[])], &accounts, &r);
        assert!(p.changes.is_empty(), "{:?}", p.changes);
        // alice disabled by an administrator, bob deleted.
        locked.status = DirectoryStatus::Disabled;
        let p = run(&[locked], &accounts, &r);
        assert_eq!(p.counts(), BTreeMap::from([(Kind::Disable, 2)]));
        let reasons: Vec<&str> = p.changes.iter().map(|c| c.reason.as_str()).collect();
        assert_eq!(
            reasons,
            ["disabled in the directory", "deleted from the directory"]
        );
        assert!(matches!(
            p.changes[0].changes[1],
            AccountChange::Disable { .. }
        ));
        let after = apply(&accounts, &p);
        assert!(
            after
                .iter()
                .filter(|a| a.name.as_str() != "carol")
                .all(|a| a.disabled)
        );
        assert_eq!(
            label(&after[0], labels::DISABLED_BY_SYNC),
            Some("directory")
        );
        assert_eq!(label(&after[1], labels::DISABLED_BY_SYNC), Some("deleted"));
        assert_eq!(label(&after[0], "team"), Some("blue"));
        // Both come back: enabled again, the mark gone, the admin's label kept.
        let back = run(
            &[entry("a", "alice", &["dev"]), entry("b", "bob", &[])],
            &after,
            &r,
        );
        assert_eq!(back.counts(), BTreeMap::from([(Kind::Enable, 2)]));
        let after = apply(&after, &back);
        assert!(!after[0].disabled && label(&after[0], labels::DISABLED_BY_SYNC).is_none());
        assert_eq!(label(&after[0], "team"), Some("blue"));
        // An account an administrator disabled stays disabled.
        let mut admin_off = after.clone();
        admin_off[1].disabled = true;
        let p = run(
            &[entry("a", "alice", &["dev"]), entry("b", "bob", &[])],
            &admin_off,
            &r,
        );
        assert!(p.changes.is_empty(), "{:?}", p.changes);
    }

    #[test]
    fn guards_trip_on_an_empty_directory_mass_disables_and_a_new_directory() {
        let r = Rules::default();
        let dir: Vec<Entry> = (0..20)
            .map(|i| entry(&format!("id{i}"), &format!("u{i}"), &[]))
            .collect();
        let accounts = apply(&[], &run(&dir, &[], &r));
        let empty = run(&[], &accounts, &r);
        assert_eq!(empty.trips.len(), 2, "{:?}", empty.trips);
        assert!(empty.trips[0].contains("no users"));
        // 2 of 20 is 10 %: allowed; 3 is not.
        assert!(run(&dir[2..], &accounts, &r).trips.is_empty());
        let p = run(&dir[3..], &accounts, &r);
        assert_eq!(p.trips.len(), 1);
        assert!(
            p.trips[0].contains("3 of 20") && p.trips[0].contains("max_disable_percent"),
            "{:?}",
            p.trips
        );
        let few = rules("guards: {max_disable_percent: 100, max_disable_count: 2}");
        assert!(run(&dir[3..], &accounts, &few).trips[0].contains("max_disable_count"));
        let moved = plan(
            Input {
                entries: &dir,
                unusable_ids: &[],
                unidentified: 0,
                accounts: &accounts,
                identity_change: Some("the base entry's id changed"),
            },
            &r,
        );
        assert!(moved.trips[0].contains("not the one of the last run"));
    }

    #[test]
    fn names_are_never_taken_over_and_renames_are_ordered() {
        let r = Rules::default();
        // A local account named dave, not linked: the directory's dave is not created.
        let local = account(None, "dave");
        let p = run(&[entry("d", "dave", &[])], std::slice::from_ref(&local), &r);
        assert!(p.changes.is_empty());
        assert!(p.skipped[0].contains("not created"), "{:?}", p.skipped);
        // b → c and a → b in one run: b moves first, then a takes its old name.
        let accounts = apply(
            &[],
            &run(&[entry("1", "a", &[]), entry("2", "b", &[])], &[], &r),
        );
        let p = run(&[entry("1", "b", &[]), entry("2", "c", &[])], &accounts, &r);
        let order: Vec<(&str, &str)> = p
            .changes
            .iter()
            .map(|c| (c.from.as_deref().unwrap(), c.account.as_str()))
            .collect();
        assert_eq!(order, [("b", "c"), ("a", "b")]);
        // A name a rename gives up is not taken by a new entry in the same run.
        let p = run(
            &[
                entry("1", "b2", &[]),
                entry("2", "b", &[]),
                entry("3", "a", &[]),
            ],
            &accounts,
            &r,
        );
        assert_eq!(
            p.counts(),
            BTreeMap::from([(Kind::Rename, 1)]),
            "{:?}",
            p.changes
        );
        assert!(
            p.skipped[0].contains("user a not created yet"),
            "{:?}",
            p.skipped
        );
        // A swap is a cycle: reported, neither renamed.
        let p = run(&[entry("1", "b", &[]), entry("2", "a", &[])], &accounts, &r);
        assert!(p.changes.is_empty(), "{:?}", p.changes);
        assert_eq!(p.skipped.len(), 2);
        assert!(p.skipped[0].contains("cycle"), "{:?}", p.skipped);
        // Two entries named alike (after lower-casing) are both left alone.
        let lower = rules("name_case: lower");
        let p = run(
            &[entry("x", "Eve", &[]), entry("y", "eve", &[])],
            &[],
            &lower,
        );
        assert!(p.changes.is_empty());
        assert_eq!(p.skipped.len(), 2);
    }

    #[test]
    fn unusable_entries_are_not_deleted_and_default_namespaces_follow_the_rule() {
        let r = Rules::default();
        let accounts = apply(&[], &run(&[entry("1", "a", &[])], &[], &r));
        let p = plan(
            Input {
                entries: &[],
                unusable_ids: &["1".to_owned()],
                unidentified: 0,
                accounts: &accounts,
                identity_change: None,
            },
            &r,
        );
        assert!(p.changes.is_empty(), "{:?}", p.changes);
        let t = rules("default_namespace: {template: 'u-{name}'}");
        let p = run(&[entry("1", "Anna.Smith", &[])], &[], &t);
        let AccountChange::Create(n) = &p.changes[0].changes[0] else {
            panic!()
        };
        assert_eq!(
            n.default_namespace.as_ref().unwrap().as_str(),
            "u-anna-smith"
        );
        let m = rules(
            "default_namespace: mapped\nnamespaces: [{regex: 'k8s-(.+)-devs', namespace: 'team-$1', role: edit}]",
        );
        let p = run(
            &[entry("1", "a", &["k8s-zeta-devs", "k8s-alpha-devs", "x"])],
            &[],
            &m,
        );
        let AccountChange::Create(n) = &p.changes[0].changes[0] else {
            panic!()
        };
        assert_eq!(n.default_namespace.as_ref().unwrap().as_str(), "team-alpha");
    }
}
