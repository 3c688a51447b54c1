//! The few parts of a pod the mutation reads, decoded straight from the review's JSON text.
//!
//! A review body is hostile input of up to [`crate::review::MAX_REVIEW_BYTES`]. Decoding the
//! whole pod (into a `serde_json::Value` tree or into k8s-openapi's `Pod`) costs many times
//! the body: `[0,0,…]` becomes 32 bytes per two input bytes, `{"name":""}` a whole `Container`
//! struct per twelve. So nothing is built for what the mutation does not read: every other
//! field is skipped by the parser as it goes ([`serde::de::IgnoredAny`]), and what is kept —
//! the runtime class, each container's name and its CPU, memory and GPU quantities, the shape
//! of its `resources` — is small and bounded: at most [`MAX_CONTAINERS`] entries in
//! `containers` and in `initContainers`. The quantities keep k8s-openapi's type and its
//! decoding rules (text, or a JSON integer).
//!
//! Each view decodes as k8s-openapi's generated types do, so the mutation agrees with a full
//! decode of the pod (`tests/differential.rs` compares the two over a generated corpus): a
//! JSON object only (an array in field order is refused), the last of duplicate keys wins
//! (also inside `requests` and `limits`), a container's missing or null `name` is `""`.
//! Where the full decode would refuse a field the mutation does not read, the view does not
//! look at it.
//!
//! Two passes: [`runtime_class`] reads only `spec.runtimeClassName` and never fails (a pod of
//! another runtime class is admitted without being decoded), then [`PodView`] for a pod the
//! webhook mutates.

use std::fmt;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The most entries read in `spec.containers`, and in `spec.initContainers`: a pod with more
/// is denied (no real pod comes near; each entry also costs one patch operation).
pub const MAX_CONTAINERS: usize = 4096;

/// `spec.runtimeClassName` of a pod's JSON if it is a string, read without keeping anything
/// else; `None` for anything else (not JSON, not an object, no such field).
pub fn runtime_class(object: &str) -> Option<String> {
    let mut de = serde_json::Deserializer::from_str(object);
    PathStr {
        path: &["spec", "runtimeClassName"],
    }
    .deserialize(&mut de)
    .ok()
    .flatten()
}

/// Follows `path` through JSON objects to a string, skipping everything else; any other type
/// on the way gives `None` (the last of duplicate keys wins, as in `serde_json::Value`).
struct PathStr<'p> {
    path: &'p [&'p str],
}

impl<'de> DeserializeSeed<'de> for PathStr<'_> {
    type Value = Option<String>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PathStr<'_> {
    type Value = Option<String>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(is_next) = map.next_key_seed(KeyIs(self.path.first().copied()))? {
            if is_next {
                found = map.next_value_seed(PathStr {
                    path: &self.path[1..],
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.path.is_empty().then(|| v.to_owned()))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// A map key compared with `Some(name)` without being kept.
struct KeyIs<'p>(Option<&'p str>);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(self.0 == Some(v))
    }
}

/// Declares a view struct's `Deserialize` as k8s-openapi's generated ones behave: a JSON
/// object only (never an array in field order), unknown keys skipped, the last of duplicate
/// keys winning.
macro_rules! map_view {
    ($ty:ident, $what:literal, [$($key:literal => |$out:ident, $map:ident| $read:expr),+ $(,)?]) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<$ty, A::Error> {
                        const KEYS: &[&str] = &[$($key),+];
                        let mut out = $ty::default();
                        while let Some(key) = map.next_key_seed(KeyIndex(KEYS))? {
                            let Some(key) = key else {
                                map.next_value::<IgnoredAny>()?;
                                continue;
                            };
                            let name = KEYS.get(key).copied().unwrap_or_default();
                            match name {
                                $($key => {
                                    let $out = &mut out;
                                    let $map = &mut map;
                                    $read
                                })+
                                _ => {
                                    map.next_value::<IgnoredAny>()?;
                                }
                            }
                        }
                        Ok(out)
                    }
                }
                d.deserialize_map(V)
            }
        }
    };
}

/// The parts of a pod the mutation reads.
#[derive(Debug, Default)]
pub struct PodView {
    /// `metadata`: absent or null is `None`.
    pub metadata: Option<MetaView>,
    /// `spec`.
    pub spec: Option<SpecView>,
}

map_view!(PodView, "a Pod", [
    "metadata" => |out, map| out.metadata = map.next_value()?,
    "spec" => |out, map| out.spec = map.next_value()?,
]);

/// What the patch needs to know of `metadata`.
#[derive(Debug, Default)]
pub struct MetaView {
    /// `annotations`, when it is a map of strings (absent or null is `None`).
    pub annotations: Option<StringMap>,
}

map_view!(MetaView, "the Pod's metadata", [
    "annotations" => |out, map| out.annotations = map.next_value()?,
]);

/// A JSON object whose values are all strings, checked and not kept.
#[derive(Debug, Default)]
pub struct StringMap;

impl<'de> Deserialize<'de> for StringMap {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StringMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StringMap, A::Error> {
                while map.next_key_seed(KeyIs(None))?.is_some() {
                    map.next_value_seed(AnyStr)?;
                }
                Ok(StringMap)
            }
        }
        d.deserialize_map(V)
    }
}

/// A JSON string, checked and not kept.
struct AnyStr;

impl<'de> DeserializeSeed<'de> for AnyStr {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for AnyStr {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
}

/// What the mutation reads of `spec`.
#[derive(Debug, Default)]
pub struct SpecView {
    /// `runtimeClassName`.
    pub runtime_class_name: Option<String>,
    /// `containers` (absent or null: none).
    pub containers: Option<ContainerList>,
    /// `initContainers` (absent or null: none).
    pub init_containers: Option<ContainerList>,
}

map_view!(SpecView, "the Pod's spec", [
    "runtimeClassName" => |out, map| out.runtime_class_name = map.next_value()?,
    "containers" => |out, map| out.containers = map.next_value()?,
    "initContainers" => |out, map| out.init_containers = map.next_value()?,
]);

/// A list of containers, at most [`MAX_CONTAINERS`] long.
#[derive(Debug, Default)]
pub struct ContainerList(pub Vec<ContainerView>);

impl<'de> Deserialize<'de> for ContainerList {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ContainerList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of containers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ContainerList, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(16));
                while let Some(c) = seq.next_element::<ContainerView>()? {
                    if out.len() == MAX_CONTAINERS {
                        return Err(de::Error::custom(format_args!(
                            "more than {MAX_CONTAINERS} containers in one list (the webhook \
                             reads at most {MAX_CONTAINERS} containers and {MAX_CONTAINERS} \
                             init containers)"
                        )));
                    }
                    out.push(c);
                }
                Ok(ContainerList(out))
            }
        }
        d.deserialize_seq(V)
    }
}

/// What the mutation reads of one container.
#[derive(Debug, Default)]
pub struct ContainerView {
    /// `name` (absent or null is `""`, as k8s-openapi's `Container` decodes it).
    pub name: String,
    /// `resources` (absent or null is `None`).
    pub resources: Option<ResourcesView>,
}

map_view!(ContainerView, "a container", [
    "name" => |out, map| out.name = map.next_value::<Option<String>>()?.unwrap_or_default(),
    "resources" => |out, map| out.resources = map.next_value()?,
]);

/// What the mutation reads of a container's `resources`.
#[derive(Debug, Default)]
pub struct ResourcesView {
    /// Whether the object has a `requests` key (even null).
    pub has_requests: bool,
    /// Whether the object has a `limits` key (even null).
    pub has_limits: bool,
    /// Whether the object has any other key.
    pub has_others: bool,
    /// `requests` (the last of duplicates).
    pub requests: Option<ResourceListView>,
    /// `limits` (the last of duplicates).
    pub limits: Option<ResourceListView>,
}

impl ResourcesView {
    /// Whether the object is `{}`.
    pub fn is_empty(&self) -> bool {
        !(self.has_requests || self.has_limits || self.has_others)
    }

    /// Whether the object is exactly `{"requests": {resource: "1"}, "limits": {resource: "1"}}`
    /// (duplicate keys read as the last one, as a JSON object's comparison does).
    pub fn is_one_of(&self, resource: &str) -> bool {
        !self.has_others
            && self
                .requests
                .as_ref()
                .is_some_and(|l| l.is_one_of(resource))
            && self.limits.as_ref().is_some_and(|l| l.is_one_of(resource))
    }
}

impl<'de> Deserialize<'de> for ResourcesView {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ResourcesView;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a container's resources")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ResourcesView, A::Error> {
                let mut out = ResourcesView::default();
                while let Some(key) = map.next_key_seed(KeyIndex(&["requests", "limits"]))? {
                    match key {
                        Some(0) => {
                            out.has_requests = true;
                            out.requests = map.next_value()?;
                        }
                        Some(1) => {
                            out.has_limits = true;
                            out.limits = map.next_value()?;
                        }
                        _ => {
                            out.has_others = true;
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

/// A map key: its index among some names, or `None` for any other.
struct KeyIndex<'p>(&'p [&'p str]);

impl<'de> DeserializeSeed<'de> for KeyIndex<'_> {
    type Value = Option<usize>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIndex<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|n| *n == v))
    }
}

/// What the mutation reads of a `requests` or `limits` map. Every value must be a quantity's
/// text or a JSON integer, as k8s-openapi's `Quantity` decodes it; the last of duplicate keys
/// wins, as in k8s-openapi's map.
#[derive(Debug, Default)]
pub struct ResourceListView {
    /// `cpu`.
    pub cpu: Option<K8sQuantity>,
    /// `memory`.
    pub memory: Option<K8sQuantity>,
    /// `nvidia.com/gpu`.
    pub gpu: Option<K8sQuantity>,
    /// The first key, whether every key is that one, and whether the last value is the JSON
    /// string `"1"`.
    single: Option<(String, bool, bool)>,
}

impl ResourceListView {
    /// Whether the map is exactly `{resource: "1"}` (duplicates of that key read as the last).
    pub fn is_one_of(&self, resource: &str) -> bool {
        self.single
            .as_ref()
            .is_some_and(|(name, only, one)| *only && *one && name == resource)
    }
}

impl<'de> Deserialize<'de> for ResourceListView {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ResourceListView;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of resource quantities")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ResourceListView, A::Error> {
                let mut out = ResourceListView::default();
                while let Some(name) = map.next_key::<String>()? {
                    let value: QuantityText = map.next_value()?;
                    let one = value.is_string_one();
                    match &mut out.single {
                        None => out.single = Some((name.clone(), true, one)),
                        Some((first, only, last_one)) => {
                            *only = *only && *first == name;
                            *last_one = one;
                        }
                    }
                    let slot = match name.as_str() {
                        "cpu" => &mut out.cpu,
                        "memory" => &mut out.memory,
                        crate::mutate::GPU_RESOURCE => &mut out.gpu,
                        _ => continue,
                    };
                    *slot = Some(K8sQuantity(value.text));
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

/// A quantity's text as k8s-openapi's `Quantity` accepts it (a string or an integer), and
/// whether it came as a string.
struct QuantityText {
    text: String,
    string: bool,
}

impl QuantityText {
    fn is_string_one(&self) -> bool {
        self.string && self.text == "1"
    }
}

impl<'de> Deserialize<'de> for QuantityText {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = QuantityText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("Quantity")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<QuantityText, E> {
                Ok(QuantityText {
                    text: v.to_string(),
                    string: false,
                })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<QuantityText, E> {
                Ok(QuantityText {
                    text: v.to_string(),
                    string: false,
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<QuantityText, E> {
                Ok(QuantityText {
                    text: v.to_owned(),
                    string: true,
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_class_is_found_leniently() {
        let rc = |s: &str| runtime_class(s);
        assert_eq!(
            rc(r#"{"spec":{"a":[1,{"b":2}],"runtimeClassName":"kata-remote"}}"#).as_deref(),
            Some("kata-remote")
        );
        assert_eq!(rc(r#"{"spec":"x"}"#), None);
        assert_eq!(rc(r#"{"spec":{"runtimeClassName":7}}"#), None);
        assert_eq!(rc(r#"[1,2]"#), None);
        assert_eq!(rc("not json"), None);
        assert_eq!(
            rc(r#"{"spec":{"runtimeClassName":"a","runtimeClassName":"b"}}"#).as_deref(),
            Some("b")
        );
    }

    #[test]
    fn a_container_list_is_capped() {
        let many = format!("[{}]", vec![r#"{"name":""}"#; MAX_CONTAINERS + 1].join(","));
        let e = serde_json::from_str::<ContainerList>(&many).unwrap_err();
        assert!(e.to_string().contains("more than 4096"), "{e}");
        let enough = format!("[{}]", vec![r#"{"name":""}"#; MAX_CONTAINERS].join(","));
        assert_eq!(
            serde_json::from_str::<ContainerList>(&enough)
                .unwrap()
                .0
                .len(),
            MAX_CONTAINERS
        );
    }

    #[test]
    fn resource_lists_keep_only_what_is_read() {
        let l: ResourceListView =
            serde_json::from_str(r#"{"x":"1","cpu":2,"memory":"1Gi","nvidia.com/gpu":"1"}"#)
                .unwrap();
        assert_eq!(l.cpu, Some(K8sQuantity("2".into())));
        assert_eq!(l.memory, Some(K8sQuantity("1Gi".into())));
        assert_eq!(l.gpu, Some(K8sQuantity("1".into())));
        assert!(!l.is_one_of("x"));
        let one: ResourceListView = serde_json::from_str(r#"{"x":"1"}"#).unwrap();
        assert!(one.is_one_of("x"));
        let number: ResourceListView = serde_json::from_str(r#"{"x":1}"#).unwrap();
        assert!(!number.is_one_of("x"));
        assert!(serde_json::from_str::<ResourceListView>(r#"{"cpu":1.5}"#).is_err());
        assert!(serde_json::from_str::<ResourceListView>(r#"{"cpu":null}"#).is_err());
        assert!(serde_json::from_str::<ResourceListView>(r#"["cpu","2"]"#).is_err());
    }
}
