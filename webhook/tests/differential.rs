//! The partial decoder (`peerpod_webhook::view`) against the previous full decode (the pod as
//! a `serde_json::Value`, then k8s-openapi's `Pod`; kept in `common/reference.rs`): over a
//! generated corpus of pods written as JSON text — duplicate keys at every level, null and
//! missing names, objects written as arrays, resources of every shape — both must admit,
//! deny, or patch alike.

mod common;

use common::reference;
use common::rng::Rng;
use peerpod_webhook::mutate::{Mutation, MutationConfig, mutate};

/// A JSON object's text from `(key, value text)` pairs, keys possibly repeated.
fn object(fields: &[(String, String)]) -> String {
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
    format!("{{{}}}", body.join(","))
}

/// Sometimes the object written as a JSON array of itself, or of its values.
fn maybe_array(r: &mut Rng, fields: &[(String, String)]) -> String {
    match r.below(40) {
        0 => format!("[{}]", object(fields)),
        1 => format!(
            "[{}]",
            fields
                .iter()
                .map(|(_, v)| v.clone())
                .collect::<Vec<_>>()
                .join(",")
        ),
        _ => object(fields),
    }
}

/// A field's value text, made at random.
type Maker<'a> = &'a dyn Fn(&mut Rng) -> String;

/// Fields from `makers`, each 0–2 times (a repeated key: duplicates), in shuffled order.
fn fields(r: &mut Rng, makers: &[(&str, Maker<'_>)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (key, value) in makers {
        let times = match r.below(8) {
            0 => 0,
            1 => 2,
            _ => 1,
        };
        for _ in 0..times {
            out.push(((*key).to_owned(), value(r)));
        }
    }
    for i in (1..out.len()).rev() {
        let j = r.below(i + 1);
        out.swap(i, j);
    }
    out
}

fn quantity(r: &mut Rng) -> String {
    if r.chance(6) {
        return r
            .pick(&["\"bad\"", "1.5", "null", "-1", "\"\"", "true", "\"1e400\""])
            .to_owned();
    }
    r.pick(&[
        "\"1\"", "\"1\"", "\"500m\"", "\"2Gi\"", "\"0\"", "1", "3", "\"1e3\"", "\"0.5\"",
    ])
    .to_owned()
}

fn resource_list(r: &mut Rng) -> String {
    if r.chance(12) {
        return "null".into();
    }
    let names = [
        "cpu",
        "memory",
        "nvidia.com/gpu",
        "kata.peerpods.io/vm",
        "x",
    ];
    let n = r.below(4);
    let mut fields = Vec::new();
    for _ in 0..n {
        let name = r.pick(&names).to_owned();
        fields.push((name, quantity(r)));
    }
    maybe_array(r, &fields)
}

fn resources(r: &mut Rng) -> String {
    match r.below(10) {
        0 => "null".into(),
        1 => "{}".into(),
        2 => r#"{"requests":{"kata.peerpods.io/vm":"1"},"limits":{"kata.peerpods.io/vm":"1"}}"#
            .into(),
        _ => {
            let f = fields(
                r,
                &[
                    ("requests", &resource_list),
                    ("limits", &resource_list),
                    ("claims", &|r: &mut Rng| {
                        r.pick(&["[]", "null", r#"[{"name":"c"}]"#]).to_owned()
                    }),
                ],
            );
            maybe_array(r, &f)
        }
    }
}

fn container(r: &mut Rng) -> String {
    let f = fields(
        r,
        &[
            ("name", &|r: &mut Rng| {
                r.pick(&["\"c\"", "\"d\"", "\"e\"", "null", "\"\"", "\"f\"", "5"])
                    .to_owned()
            }),
            ("image", &|r: &mut Rng| {
                r.pick(&["\"busybox\"", "null"]).to_owned()
            }),
            ("resources", &resources),
        ],
    );
    maybe_array(r, &f)
}

fn containers(r: &mut Rng) -> String {
    match r.below(12) {
        0 => "null".into(),
        1 => "[]".into(),
        2 => container(r),
        _ => {
            let n = 1 + r.below(3);
            let list: Vec<String> = (0..n).map(|_| container(r)).collect();
            format!("[{}]", list.join(","))
        }
    }
}

fn spec(r: &mut Rng) -> String {
    if r.chance(20) {
        return "null".into();
    }
    let f = fields(
        r,
        &[
            ("runtimeClassName", &|r: &mut Rng| {
                r.pick(&[
                    "\"kata-remote\"",
                    "\"kata-remote\"",
                    "\"kata-remote\"",
                    "\"kata-remote\"",
                    "\"kata-remote\"",
                    "\"kata-remote\"",
                    "\"other\"",
                    "null",
                ])
                .to_owned()
            }),
            ("containers", &containers),
            ("initContainers", &containers),
            ("nodeName", &|r: &mut Rng| {
                r.pick(&["\"n\"", "null"]).to_owned()
            }),
        ],
    );
    maybe_array(r, &f)
}

fn metadata(r: &mut Rng) -> String {
    if r.chance(20) {
        return "null".into();
    }
    let f = fields(
        r,
        &[
            ("name", &|r: &mut Rng| r.pick(&["\"p\"", "null"]).to_owned()),
            ("annotations", &|r: &mut Rng| {
                r.pick(&[
                    "null",
                    "{}",
                    r#"{"a":"b"}"#,
                    r#"{"a":"b","a":"c"}"#,
                    r#"{"a":1}"#,
                    r#"[{"a":"b"}]"#,
                    r#"{"io.katacontainers.config.hypervisor.default_vcpus":"9"}"#,
                ])
                .to_owned()
            }),
        ],
    );
    maybe_array(r, &f)
}

fn pod(r: &mut Rng) -> String {
    let mut f = vec![
        ("apiVersion".to_owned(), "\"v1\"".to_owned()),
        ("kind".to_owned(), "\"Pod\"".to_owned()),
    ];
    f.extend(fields(r, &[("metadata", &metadata), ("spec", &spec)]));
    object(&f)
}

#[test]
fn the_partial_decoder_agrees_with_the_full_pod_decode() {
    let config = MutationConfig::default();
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut patched, mut denied, mut untouched) = (0, 0, 0);
    for case in 0..30_000 {
        let text = pod(&mut r);
        let ours = mutate(&config, &text);
        let theirs = reference::mutate(&config, &text);
        match (&ours, &theirs) {
            (Ok(Mutation::Patch(a)), Ok(Some(b))) if a == b => patched += 1,
            (Ok(Mutation::Untouched), Ok(None)) => untouched += 1,
            (Err(_), Err(_)) => denied += 1,
            _ => panic!("case {case} disagrees:\n{text}\nview: {ours:?}\nfull decode: {theirs:?}"),
        }
    }
    eprintln!("agreed: {patched} patched, {denied} denied, {untouched} untouched");
    // The corpus reaches every outcome, often.
    assert!(patched > 1000 && denied > 1000 && untouched > 1000);
}

/// The cases the review of issue 16 named, each checked against the full decode.
#[test]
fn the_named_disagreements_are_gone() {
    let config = MutationConfig::default();
    let cases = [
        // Duplicate keys: the last wins (the view used to refuse them).
        r#"{"apiVersion":"v1","kind":"Pod","spec":{"runtimeClassName":"kata-remote","containers":[{"name":"a","name":"b","resources":{"requests":{"cpu":"1"}}}]}}"#,
        r#"{"apiVersion":"v1","kind":"Pod","spec":{"runtimeClassName":"kata-remote","containers":[],"containers":[{"name":"a"}]}}"#,
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{},"metadata":{"annotations":{}},"spec":{"runtimeClassName":"kata-remote","containers":[{"name":"a","resources":{"requests":{"cpu":"1"}}}]}}"#,
        // A container without a name, or a null one: "".
        r#"{"apiVersion":"v1","kind":"Pod","spec":{"runtimeClassName":"kata-remote","containers":[{"resources":{"requests":{"cpu":"1"}}}]}}"#,
        r#"{"apiVersion":"v1","kind":"Pod","spec":{"runtimeClassName":"kata-remote","containers":[{"name":null}]}}"#,
        // Objects written as arrays: refused (the view used to accept them and patch paths
        // that do not exist).
        r#"{"apiVersion":"v1","kind":"Pod","metadata":[{"annotations":{}}],"spec":{"runtimeClassName":"kata-remote","containers":[{"name":"a","resources":{"requests":{"cpu":"1"}}}]}}"#,
        r#"{"apiVersion":"v1","kind":"Pod","spec":{"runtimeClassName":"kata-remote","containers":[["a",null]]}}"#,
        // Duplicate keys in a resource list: no extra operation.
        r#"{"apiVersion":"v1","kind":"Pod","spec":{"runtimeClassName":"kata-remote","containers":[{"name":"a","resources":{"requests":{"kata.peerpods.io/vm":"1","kata.peerpods.io/vm":"1"},"limits":{"kata.peerpods.io/vm":"1"}}}]}}"#,
        r#"{"apiVersion":"v1","kind":"Pod","spec":{"runtimeClassName":"kata-remote","containers":[{"name":"a","resources":{"requests":{"kata.peerpods.io/vm":"2","kata.peerpods.io/vm":"1"},"limits":{"kata.peerpods.io/vm":"1"},"limits":{"kata.peerpods.io/vm":"1"}}}]}}"#,
        r#"{"apiVersion":"v1","kind":"Pod","spec":{"runtimeClassName":"kata-remote","containers":[{"name":"a","resources":{"requests":{"kata.peerpods.io/vm":"1"},"limits":{"kata.peerpods.io/vm":"1"},"requests":null}}]}}"#,
    ];
    for text in cases {
        let ours = mutate(&config, text);
        let theirs = reference::mutate(&config, text);
        let agree = match (&ours, &theirs) {
            (Ok(Mutation::Patch(a)), Ok(Some(b))) => a == b,
            (Ok(Mutation::Untouched), Ok(None)) | (Err(_), Err(_)) => true,
            _ => false,
        };
        assert!(agree, "{text}\nview: {ours:?}\nfull decode: {theirs:?}");
    }
}
