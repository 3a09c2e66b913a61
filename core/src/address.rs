//! Names and placement: type names, addresses, key groups and the shards that own them.

use std::fmt;
use std::sync::Arc;

use crate::limits;
use crate::Error;

/// The logical type of a function, message, value or egress: `namespace/name`.
///
/// Parsing splits at the last `/` (as the StateFun SDKs do), so a namespace may contain `/`.
/// Cloning is cheap: both parts share one allocation.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TypeName {
    /// `namespace/name`, split at `slash`.
    full: Arc<str>,
    slash: u16,
}

impl TypeName {
    pub fn new(namespace: &str, name: &str) -> Result<TypeName, Error> {
        TypeName::parse(&format!("{namespace}/{name}"))
    }

    /// Parses `namespace/name`. Both parts must be non-empty.
    pub fn parse(text: &str) -> Result<TypeName, Error> {
        let invalid = |why| Error::InvalidTypeName { name: text.chars().take(80).collect(), why };
        if text.len() > limits::name_bytes_max {
            return Err(invalid("longer than the limit"));
        }
        let slash = text.rfind('/').ok_or_else(|| invalid("expected namespace/name"))?;
        if slash == 0 {
            return Err(invalid("the namespace is empty"));
        }
        if slash + 1 == text.len() {
            return Err(invalid("the name is empty"));
        }
        if text.chars().any(char::is_control) {
            return Err(invalid("contains a control character"));
        }
        let slash = u16::try_from(slash).map_err(|_| invalid("longer than the limit"))?;
        Ok(TypeName { full: text.into(), slash })
    }

    pub fn namespace(&self) -> &str {
        &self.full[..usize::from(self.slash)]
    }

    pub fn name(&self) -> &str {
        &self.full[usize::from(self.slash) + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl fmt::Display for TypeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for TypeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TypeName({})", self.full)
    }
}

/// One virtual function instance: a function type and an id, `namespace/type/id`.
/// Instances always exist; one that was never called has empty state.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    pub function: TypeName,
    pub id: Arc<str>,
}

impl Address {
    pub fn new(function: TypeName, id: &str) -> Result<Address, Error> {
        if id.len() > limits::name_bytes_max {
            return Err(Error::InvalidId { why: "longer than the limit" });
        }
        if id.chars().any(char::is_control) {
            return Err(Error::InvalidId { why: "contains a control character" });
        }
        Ok(Address { function, id: id.into() })
    }

    /// The key group of this address: a hash of the id only, so that all functions of one
    /// entity (`bank/account/alice`, `bank/ledger/alice`) live on the same shard.
    pub fn key_group(&self) -> KeyGroup {
        KeyGroup::of_id(&self.id)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.function, self.id)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({}/{})", self.function, self.id)
    }
}

/// A slice of the key space; the unit of ownership and of rescaling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyGroup(pub u16);

impl KeyGroup {
    /// The key group of an id. The hash is part of the on-disk contract (it decides where
    /// state lives), so it is spelled out here rather than taken from `std`, whose hashers
    /// may change between releases: FNV-1a over the bytes, then the MurmurHash3 finaliser
    /// to spread the low bits.
    pub fn of_id(id: &str) -> KeyGroup {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in id.as_bytes() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        hash ^= hash >> 33;
        let group = hash % u64::from(limits::key_groups_max);
        KeyGroup(u16::try_from(group).unwrap_or(0))
    }
}

/// One core's share of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u16);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard {}", self.0)
    }
}

/// Which shard owns which key group: contiguous ranges, as Flink assigns key groups to
/// operator instances, so that rescaling moves whole ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routing {
    shards: u16,
}

impl Routing {
    pub fn new(shards: u16) -> Routing {
        assert!((1..=limits::shards_max).contains(&shards), "shard count {shards} out of range");
        Routing { shards }
    }

    pub fn shards(&self) -> u16 {
        self.shards
    }

    pub fn shard_of_group(&self, group: KeyGroup) -> ShardId {
        assert!(group.0 < limits::key_groups_max);
        let shard = u32::from(group.0) * u32::from(self.shards) / u32::from(limits::key_groups_max);
        ShardId(u16::try_from(shard).unwrap_or(0))
    }

    pub fn shard_of(&self, address: &Address) -> ShardId {
        self.shard_of_group(address.key_group())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_name_splits_at_the_last_slash() {
        let name = TypeName::parse("com.example/fns/greeter").unwrap();
        assert_eq!(name.namespace(), "com.example/fns");
        assert_eq!(name.name(), "greeter");
        assert_eq!(name.to_string(), "com.example/fns/greeter");
    }

    #[test]
    fn type_name_rejects_malformed_names() {
        for bad in ["", "noslash", "/name", "namespace/", "a/b\n"] {
            assert!(TypeName::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(TypeName::parse(&"a/".repeat(limits::name_bytes_max)).is_err());
    }

    #[test]
    fn key_group_depends_on_the_id_only() {
        let account = Address::new(TypeName::parse("bank/account").unwrap(), "alice").unwrap();
        let ledger = Address::new(TypeName::parse("bank/ledger").unwrap(), "alice").unwrap();
        assert_eq!(account.key_group(), ledger.key_group());
    }

    #[test]
    fn key_group_hash_is_stable() {
        // The hash decides where state lives on disk: it must never change.
        let groups: Vec<u16> = ["a", "b", "alice", "0"].iter().map(|id| KeyGroup::of_id(id).0).collect();
        assert_eq!(groups, [3675, 720, 2292, 2860]);
    }

    #[test]
    fn key_groups_spread_evenly_over_shards() {
        let routing = Routing::new(4);
        let mut counts = [0u32; 4];
        for i in 0..40_000 {
            let address = Address::new(TypeName::parse("a/b").unwrap(), &i.to_string()).unwrap();
            counts[usize::from(routing.shard_of(&address).0)] += 1;
        }
        for count in counts {
            assert!((9_000..11_000).contains(&count), "uneven spread {counts:?}");
        }
    }

    #[test]
    fn routing_assigns_contiguous_ranges() {
        let routing = Routing::new(3);
        assert_eq!(routing.shard_of_group(KeyGroup(0)), ShardId(0));
        assert_eq!(routing.shard_of_group(KeyGroup(limits::key_groups_max - 1)), ShardId(2));
        let mut previous = 0;
        for group in 0..limits::key_groups_max {
            let shard = routing.shard_of_group(KeyGroup(group)).0;
            assert!(shard == previous || shard == previous + 1);
            previous = shard;
        }
    }
}
