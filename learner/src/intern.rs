//! Names (workloads, pods, Services, DNS names) interned once and referred to by a small
//! number, so a rule costs the same few bytes whatever its names' lengths, and the same
//! pod named in a thousand rules is stored once.

use std::collections::HashMap;

use rustc_hash::FxBuildHasher;

/// A name, by its number in its [`Interner`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(u32);

impl Name {
    /// The name's number, from 0.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Every name seen, each once.
#[derive(Clone, Debug, Default)]
pub struct Interner {
    ids: HashMap<Box<str>, Name, FxBuildHasher>,
    names: Vec<Box<str>>,
}

impl Interner {
    pub fn intern(&mut self, name: &str) -> Name {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = Name(u32::try_from(self.names.len()).expect("fewer than 2^32 names"));
        self.names.push(name.into());
        self.ids.insert(name.into(), id);
        id
    }

    /// The name of `id`, which this interner gave out.
    pub fn get(&self, id: Name) -> &str {
        &self.names[id.0 as usize]
    }

    /// Every name, by number.
    pub fn iter(&self) -> impl Iterator<Item = (Name, &str)> {
        self.names
            .iter()
            .enumerate()
            .map(|(i, n)| (Name(i as u32), &**n))
    }

    /// `other`'s names as names of this interner, indexed by `other`'s numbers
    /// ([`Name::index`]): to move rules between aggregates with one lookup per name.
    pub fn translation(&mut self, other: &Interner) -> Vec<Name> {
        other.iter().map(|(_, n)| self.intern(n)).collect()
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_stored_once() {
        let mut names = Interner::default();
        let a = names.intern("shop/Deployment/api");
        let b = names.intern("shop/Deployment/web");
        assert_eq!(names.intern("shop/Deployment/api"), a);
        assert_ne!(a, b);
        assert_eq!(names.get(b), "shop/Deployment/web");
        assert_eq!(names.len(), 2);
    }
}
