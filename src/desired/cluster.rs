//! The cluster source of the desired state: one namespace's objects as the
//! operator's reflectors hold them. A malformed object (one that no longer
//! deserializes) keeps its last good state in the ledger and holds back
//! every removal in its namespace, as a broken file does in a folder.

use std::path::PathBuf;

use kube::core::error_boundary::InvalidObject;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};

use crate::crd::{CreditAccount, CreditGroup, CreditRequest, MemberAllocation};
use crate::manifests::{Object, Sourced};

/// A watched object that may not deserialize: one malformed object (say,
/// written before a CRD tightened) must not stall a whole watch.
pub type Guarded<K> = DeserializeGuard<K>;

/// `decidedBy` of an approval no admission policy stamped.
pub const UNKNOWN_APPROVER: &str = "unknown";

/// The well-formed objects of a store in `ns`, and the malformed ones.
pub fn split<K>(store: &Store<Guarded<K>>, ns: &str) -> (Vec<K>, Vec<InvalidObject>)
where
    K: Resource<DynamicType = ()> + Clone,
{
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for o in store.state() {
        if o.meta().namespace.as_deref() != Some(ns) {
            continue;
        }
        match &o.0 {
            Ok(k) => good.push(k.clone()),
            Err(e) => bad.push(e.clone()),
        }
    }
    (good, bad)
}

/// An object of the API named as a folder would name its file
/// (`Kind/namespace/name`), for the rules and their reports.
pub fn sourced(kind: &str, ns: &str, name: &str, position: usize, object: Object) -> Sourced {
    Sourced {
        file: PathBuf::from(format!("{kind}/{ns}/{name}")),
        position,
        object,
    }
}

/// Who decided a request: `status.approval.by`, which the chart's
/// admission policy stamps with the username of the API request that set
/// the approval (field managers are chosen by clients and name no one).
pub fn approver(s: &Sourced) -> String {
    let Object::Request(r) = &s.object else {
        return UNKNOWN_APPROVER.into();
    };
    r.status
        .as_ref()
        .and_then(|st| st.approval.as_ref())
        .and_then(|a| a.by.clone())
        .filter(|by| !by.is_empty())
        .unwrap_or_else(|| UNKNOWN_APPROVER.into())
}

/// A namespace as the reflectors hold it.
pub struct Namespace {
    /// The account, then its groups, members and requests, for the rules.
    pub objects: Vec<Sourced>,
    /// The same objects, typed, for their statuses.
    pub groups: Vec<CreditGroup>,
    pub members: Vec<MemberAllocation>,
    pub requests: Vec<CreditRequest>,
    /// Objects that no longer deserialize, by kind.
    pub bad_groups: Vec<InvalidObject>,
    pub bad_members: Vec<InvalidObject>,
    pub bad_requests: Vec<InvalidObject>,
}

impl Namespace {
    /// The objects of `account`'s namespace in the stores.
    pub fn read(
        account: &CreditAccount,
        groups: &Store<Guarded<CreditGroup>>,
        members: &Store<Guarded<MemberAllocation>>,
        requests: &Store<Guarded<CreditRequest>>,
    ) -> Namespace {
        let ns = account.namespace().unwrap_or_default();
        let mut objects = vec![sourced(
            "CreditAccount",
            &ns,
            &account.name_any(),
            0,
            Object::Account(account.clone()),
        )];
        let (groups, bad_groups) = split(groups, &ns);
        let (members, bad_members) = split(members, &ns);
        let (requests, bad_requests) = split(requests, &ns);
        for g in &groups {
            let object = Object::Group(g.clone());
            objects.push(sourced("CreditGroup", &ns, &g.name_any(), objects.len(), object));
        }
        for m in &members {
            let object = Object::Member(m.clone());
            objects.push(sourced("MemberAllocation", &ns, &m.name_any(), objects.len(), object));
        }
        for r in &requests {
            let object = Object::Request(r.clone());
            objects.push(sourced("CreditRequest", &ns, &r.name_any(), objects.len(), object));
        }
        Namespace {
            objects,
            groups,
            members,
            requests,
            bad_groups,
            bad_members,
            bad_requests,
        }
    }

    /// Objects that no longer deserialize: while there is one, nothing in
    /// the namespace is removed.
    pub fn malformed(&self) -> usize {
        self.bad_groups.len() + self.bad_members.len() + self.bad_requests.len()
    }
}
