//! Entry point of the fuzz target `provision_user_data` in `fuzz/` and of the in-tree
//! mutation test: user data and the initdata it carries, as the host sends them. None may
//! panic; whatever parses must respect the bounds.

use crate::files;
use crate::initdata;
use crate::userdata::{CloudConfig, MAX_CONTENT, MAX_ENTRIES};

/// Parses `data` as user data, checks every path against the allow-list and every
/// `initdata` entry as initdata; the first byte 0 feeds the rest straight to the initdata
/// decoder instead.
pub fn user_data(data: &[u8]) {
    if let Some((0, rest)) = data.split_first() {
        let _ = initdata::files_from(rest);
        return;
    }
    let Ok(cc) = CloudConfig::parse(data) else {
        return;
    };
    assert!(cc.write_files.len() <= MAX_ENTRIES);
    for wf in &cc.write_files {
        assert!(wf.content.len() <= MAX_CONTENT);
        if files::allowed(&wf.path) == Some("initdata") {
            let _ = initdata::files_from(&wf.content);
        }
    }
}

/// Parses `data` as a WireServer goal state: refused or accepted, never a panic, and an
/// accepted one respects the bounds and yields a Health document that parses back.
pub fn goal_state(data: &[u8]) {
    use crate::azure_ready::{GoalState, MAX_GOAL_STATE, MAX_ID};
    let Ok(gs) = GoalState::parse(data) else {
        return;
    };
    assert!(data.len() <= MAX_GOAL_STATE);
    for v in [&gs.incarnation, &gs.container_id, &gs.instance_id] {
        assert!(!v.is_empty() && v.len() <= MAX_ID);
    }
    let health = gs.health_xml();
    assert!(roxmltree::Document::parse(&health).is_ok(), "{health}");
}
