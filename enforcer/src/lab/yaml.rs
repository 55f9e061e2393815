//! Positions of values in a YAML document, for errors found after parsing (duplicates,
//! references between items) that serde_yaml could not locate itself.
//!
//! serde_yaml keeps no spans, but it attaches the position of the node being deserialized to
//! any error raised while deserializing it. [`locate`] walks the document with a visitor that
//! skips everything off the path and raises a marker error exactly at the target node, then
//! reads the position from that error. No second YAML parser, and flow style, anchors and
//! comments are handled as serde_yaml handles them.

use std::fmt::{self, Write as _};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One step of a path into the document: a mapping key or a sequence index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seg {
    Key(&'static str),
    Index(usize),
}

/// A path such as `services[1].selector`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<Seg>);

impl FieldPath {
    pub fn key(mut self, key: &'static str) -> Self {
        self.0.push(Seg::Key(key));
        self
    }

    pub fn index(mut self, index: usize) -> Self {
        self.0.push(Seg::Index(index));
        self
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(document)");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(key) if i == 0 => f.write_str(key)?,
                Seg::Key(key) => write!(f, ".{key}")?,
                Seg::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// 1-based line and column of the value at `path`, or of its nearest ancestor present in the
/// document (the document itself is at 1:1).
pub fn locate(text: &str, path: &FieldPath) -> (usize, usize) {
    (0..=path.0.len())
        .rev()
        .find_map(|len| locate_exact(text, &path.0[..len]))
        .unwrap_or((1, 1))
}

fn locate_exact(text: &str, path: &[Seg]) -> Option<(usize, usize)> {
    let err = Walk { path }
        .deserialize(serde_yaml::Deserializer::from_str(text))
        .err()?;
    if !err.to_string().contains(MARKER) {
        return None;
    }
    let location = err.location()?;
    Some((location.line(), location.column()))
}

/// Raised at the target node; never shown to anyone.
const MARKER: &str = "palisade: located";

struct Walk<'a> {
    path: &'a [Seg],
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        if self.path.is_empty() {
            // Raised from inside the deserializer's visit, so it carries this node's position.
            deserializer.deserialize_any(Target)
        } else {
            deserializer.deserialize_any(self)
        }
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping or sequence on the path")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (first, rest) = self.path.split_first().expect("walked past the target");
        let mut key = String::new();
        while map.next_key_seed(KeyText(&mut key))?.is_some() {
            if matches!(first, Seg::Key(want) if *want == key) {
                map.next_value_seed(Walk { path: rest })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let (first, rest) = self.path.split_first().expect("walked past the target");
        for i in 0.. {
            let more = if *first == Seg::Index(i) {
                seq.next_element_seed(Walk { path: rest })?.is_some()
            } else {
                seq.next_element::<IgnoredAny>()?.is_some()
            };
            if !more {
                break;
            }
        }
        Ok(())
    }

    // A scalar where the path goes deeper: the path is not in this document.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// Keys are compared as text whatever their YAML type (`80:` is a number key).
struct KeyText<'a>(&'a mut String);

impl<'de> DeserializeSeed<'de> for KeyText<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyText<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a scalar key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.clear();
        self.0.push_str(v);
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.set(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.set(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.set(v)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.set(v)
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.clear();
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // A complex key never matches a field name.
        self.0.clear();
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.0.clear();
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

impl KeyText<'_> {
    fn set<E>(self, v: impl fmt::Display) -> Result<(), E> {
        self.0.clear();
        write!(self.0, "{v}").expect("writing to a String");
        Ok(())
    }
}

struct Target;

impl<'de> Visitor<'de> for Target {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("anything")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(MARKER))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(MARKER))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(MARKER))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(MARKER))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(MARKER))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(MARKER))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(MARKER))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(MARKER))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
namespaces:
  - name: shop
    labels: {team: web}
services:
  - name: api
    selector:
      app: api
  - {name: db, selector: {app: db}}
";

    fn path(segs: &[Seg]) -> FieldPath {
        FieldPath(segs.to_vec())
    }

    #[test]
    fn finds_values_in_block_and_flow_style() {
        use Seg::*;
        assert_eq!(
            locate(DOC, &path(&[Key("services"), Index(0), Key("selector")])),
            (7, 7)
        );
        assert_eq!(
            locate(DOC, &path(&[Key("services"), Index(1), Key("selector")])),
            (8, 26)
        );
        assert_eq!(
            locate(DOC, &path(&[Key("namespaces"), Index(0), Key("name")])),
            (2, 11)
        );
        assert_eq!(locate(DOC, &path(&[Key("namespaces"), Index(0)])), (2, 5));
    }

    #[test]
    fn falls_back_to_the_nearest_ancestor() {
        use Seg::*;
        let missing = path(&[Key("services"), Index(1), Key("ports"), Index(3)]);
        assert_eq!(locate(DOC, &missing), (8, 5));
        assert_eq!(locate(DOC, &path(&[Key("externals")])), (1, 1));
    }

    #[test]
    fn displays_like_serde_paths() {
        use Seg::*;
        let p = path(&[Key("services"), Index(1), Key("selector")]);
        assert_eq!(p.to_string(), "services[1].selector");
    }
}
