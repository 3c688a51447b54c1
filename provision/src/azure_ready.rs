//! Reports the VM Ready to the Azure WireServer (`azure-ready`), as a VM without the Azure
//! Linux agent must: without it, Azure considers the VM's provisioning unfinished and the
//! cloud-api-adaptor's create call waits for it until it times out.
//!
//! The protocol (WALinuxAgent's and cloud-init's "report ready"): `GET
//! <wireserver>/machine/?comp=goalstate` with `x-ms-version: 2012-11-30` answers a `GoalState`
//! XML document; its `Incarnation`, `Container/ContainerId` and
//! `Container/RoleInstanceList/RoleInstance/InstanceId` go into a `Health` document with
//! `State` `Ready`, posted to `<wireserver>/machine/?comp=health` with `Content-Type:
//! text/xml;charset=utf-8`, `x-ms-version` and `x-ms-agent-name`.
//!
//! The WireServer is outside the trust boundary: its reply is capped at [`MAX_GOAL_STATE`]
//! bytes, parsed without DTDs (so no entity expansion), and each identifier must be short
//! plain text that needs no XML escaping ([`GoalState::parse`]). Both steps are retried until a
//! deadline ([`Retry`]). Reporting Ready again is harmless, so a rerun is safe.

use std::time::{Duration, Instant};

/// Azure's WireServer.
pub const WIRESERVER: &str = "http://168.63.129.16";
/// The protocol version sent in `x-ms-version`.
pub const MS_VERSION: &str = "2012-11-30";
/// The `x-ms-agent-name` sent with the health report.
pub const AGENT_NAME: &str = "WALinuxAgent";
/// The largest goal state accepted, in bytes (Azure's are a few KiB).
pub const MAX_GOAL_STATE: usize = 64 * 1024;
/// The longest identifier (container id, instance id, incarnation) accepted.
pub const MAX_ID: usize = 256;

/// What the health report needs from the goal state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoalState {
    /// `GoalState/Incarnation` (digits).
    pub incarnation: String,
    /// `GoalState/Container/ContainerId`.
    pub container_id: String,
    /// `GoalState/Container/RoleInstanceList/RoleInstance/InstanceId` (the first).
    pub instance_id: String,
}

/// Why a goal state is refused.
#[derive(Debug, thiserror::Error)]
pub enum GoalStateError {
    /// Larger than [`MAX_GOAL_STATE`].
    #[error("the goal state is {0} bytes, more than the {MAX_GOAL_STATE} accepted")]
    TooLarge(usize),
    /// Not well-formed XML, or it has a DTD (refused: entity expansion).
    #[error("the goal state is not acceptable XML (DTDs are refused): {0}")]
    Xml(String),
    /// The root element is not `GoalState`.
    #[error("the goal state's root element is <{0}>, not <GoalState>")]
    Root(String),
    /// A required element is missing.
    #[error("the goal state has no {0}")]
    Missing(&'static str),
    /// An identifier is empty, too long or has characters outside plain ASCII text.
    #[error(
        "the goal state's {0} is refused (empty, over {MAX_ID} bytes, or not plain ASCII \
         without <>&'\")"
    )]
    BadValue(&'static str),
}

impl GoalState {
    /// Parses a goal state reply, with the bounds above.
    pub fn parse(raw: &[u8]) -> Result<Self, GoalStateError> {
        if raw.len() > MAX_GOAL_STATE {
            return Err(GoalStateError::TooLarge(raw.len()));
        }
        let text =
            std::str::from_utf8(raw).map_err(|_| GoalStateError::Xml("not UTF-8".to_owned()))?;
        let opts = roxmltree::ParsingOptions {
            allow_dtd: false,
            nodes_limit: 4096,
        };
        let doc = roxmltree::Document::parse_with_options(text, opts)
            .map_err(|e| GoalStateError::Xml(e.to_string()))?;
        let root = doc.root_element();
        if root.tag_name().name() != "GoalState" {
            return Err(GoalStateError::Root(truncate(root.tag_name().name())));
        }
        let incarnation = text_at(root, &["Incarnation"], "Incarnation")?;
        if !incarnation.bytes().all(|b| b.is_ascii_digit()) {
            return Err(GoalStateError::BadValue("Incarnation"));
        }
        let container_id = text_at(root, &["Container", "ContainerId"], "Container/ContainerId")?;
        let instance_id = text_at(
            root,
            &[
                "Container",
                "RoleInstanceList",
                "RoleInstance",
                "InstanceId",
            ],
            "Container/RoleInstanceList/RoleInstance/InstanceId",
        )?;
        Ok(Self {
            incarnation,
            container_id,
            instance_id,
        })
    }

    /// The `Health` document reporting this goal state Ready.
    pub fn health_xml(&self) -> String {
        // The values were checked to need no escaping.
        format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
             <Health xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
             xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\">\n\
             <GoalStateIncarnation>{}</GoalStateIncarnation>\n\
             <Container>\n<ContainerId>{}</ContainerId>\n<RoleInstanceList>\n<Role>\n\
             <InstanceId>{}</InstanceId>\n<Health>\n<State>Ready</State>\n</Health>\n\
             </Role>\n</RoleInstanceList>\n</Container>\n</Health>\n",
            self.incarnation, self.container_id, self.instance_id
        )
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// The trimmed text of the first element along `path` below `node`, checked.
fn text_at(
    mut node: roxmltree::Node<'_, '_>,
    path: &[&str],
    what: &'static str,
) -> Result<String, GoalStateError> {
    for name in path {
        node = node
            .children()
            .find(|c| c.is_element() && c.tag_name().name() == *name)
            .ok_or(GoalStateError::Missing(what))?;
    }
    let text = node.text().unwrap_or("").trim();
    let plain = |b: u8| b.is_ascii_graphic() && !matches!(b, b'<' | b'>' | b'&' | b'\'' | b'"');
    if text.is_empty() || text.len() > MAX_ID || !text.bytes().all(plain) {
        return Err(GoalStateError::BadValue(what));
    }
    Ok(text.to_owned())
}

/// How the WireServer is retried.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// The whole report's deadline.
    pub deadline: Duration,
    /// The first pause between attempts; doubled after each, up to `max_delay`.
    pub first_delay: Duration,
    /// The longest pause.
    pub max_delay: Duration,
    /// The longest one request may take.
    pub attempt_timeout: Duration,
}

impl Retry {
    /// `deadline` in all; pauses from 200 ms up to 5 s; 15 s per request.
    pub fn with_deadline(deadline: Duration) -> Self {
        Self {
            deadline,
            first_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(15),
        }
    }
}

/// Why Ready was not reported.
#[derive(Debug, thiserror::Error)]
pub enum ReadyError {
    /// The HTTP client could not be built.
    #[error("cannot build the WireServer HTTP client: {0}")]
    Client(String),
    /// No success before the deadline.
    #[error(
        "could not report Ready to the WireServer {url} after {attempts} attempts in {secs} s \
         (is this an Azure VM with 168.63.129.16 reachable? raise --timeout if it is slow); \
         last error: {last}"
    )]
    Deadline {
        /// The WireServer's base URL.
        url: String,
        /// How many attempts.
        attempts: u32,
        /// The deadline in seconds.
        secs: u64,
        /// The last attempt's error.
        last: String,
    },
}

/// Fetches the goal state from `base` (e.g. [`WIRESERVER`]) and reports it Ready, retrying
/// both until `retry.deadline`. Returns the goal state reported.
pub async fn report_ready(base: &str, retry: Retry) -> Result<GoalState, ReadyError> {
    let base = base.trim_end_matches('/');
    let client = peerpod_kbs_client::http_builder(base)
        .no_proxy()
        .build()
        .map_err(|e| ReadyError::Client(peerpod_kbs_client::error_chain(&e)))?;
    let start = Instant::now();
    let mut delay = retry.first_delay;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let remaining = retry.deadline.saturating_sub(start.elapsed());
        let timeout = retry
            .attempt_timeout
            .min(remaining)
            .max(Duration::from_millis(50));
        let err = match attempt(&client, base, timeout).await {
            Ok(gs) => {
                tracing::info!(
                    incarnation = gs.incarnation,
                    container_id = gs.container_id,
                    instance_id = gs.instance_id,
                    attempts,
                    "reported Ready to the WireServer"
                );
                return Ok(gs);
            }
            Err(e) => e,
        };
        tracing::warn!(url = base, attempt = attempts, error = %err, "WireServer not done; retrying");
        if start.elapsed() + delay >= retry.deadline {
            return Err(ReadyError::Deadline {
                url: base.to_owned(),
                attempts,
                secs: retry.deadline.as_secs(),
                last: err,
            });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(retry.max_delay);
    }
}

async fn attempt(
    client: &reqwest::Client,
    base: &str,
    timeout: Duration,
) -> Result<GoalState, String> {
    let url = format!("{base}/machine/?comp=goalstate");
    let resp = client
        .get(&url)
        .header("x-ms-version", MS_VERSION)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {}", peerpod_kbs_client::error_chain(&e)))?;
    if let Some(why) = peerpod_kbs_client::refused_redirect(&resp, "the WireServer") {
        return Err(why);
    }
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("GET {url} answered {status}"));
    }
    let body = peerpod_kbs_client::read_body(resp, MAX_GOAL_STATE)
        .await
        .map_err(|e| format!("GET {url}: {}", peerpod_kbs_client::error_chain(&e)))?;
    let gs = GoalState::parse(&body).map_err(|e| e.to_string())?;

    let url = format!("{base}/machine/?comp=health");
    let resp = client
        .post(&url)
        .header("x-ms-version", MS_VERSION)
        .header("x-ms-agent-name", AGENT_NAME)
        .header("Content-Type", "text/xml;charset=utf-8")
        .body(gs.health_xml())
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| format!("POST {url}: {}", peerpod_kbs_client::error_chain(&e)))?;
    if let Some(why) = peerpod_kbs_client::refused_redirect(&resp, "the WireServer") {
        return Err(why);
    }
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("POST {url} answered {status}"));
    }
    Ok(gs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<GoalState \
        xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><Version>2012-11-30</Version>\
        <Incarnation>7</Incarnation><Machine><ExpectedState>Started</ExpectedState></Machine>\
        <Container><ContainerId>c6d5a1f0-1a2b-4c3d-8e9f-0a1b2c3d4e5f</ContainerId>\
        <RoleInstanceList><RoleInstance><InstanceId>896a8f33.podvm-abc</InstanceId>\
        </RoleInstance></RoleInstanceList></Container></GoalState>";

    #[test]
    fn parses_azure_goal_state() -> Result<(), GoalStateError> {
        let gs = GoalState::parse(GOOD.as_bytes())?;
        assert_eq!(gs.incarnation, "7");
        assert_eq!(gs.container_id, "c6d5a1f0-1a2b-4c3d-8e9f-0a1b2c3d4e5f");
        assert_eq!(gs.instance_id, "896a8f33.podvm-abc");
        let health = gs.health_xml();
        let doc =
            roxmltree::Document::parse(&health).map_err(|e| GoalStateError::Xml(e.to_string()))?;
        let texts: Vec<&str> = doc
            .descendants()
            .filter(|n| n.is_element())
            .filter_map(|n| n.text())
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect();
        assert_eq!(
            texts,
            [
                "7",
                "c6d5a1f0-1a2b-4c3d-8e9f-0a1b2c3d4e5f",
                "896a8f33.podvm-abc",
                "Ready"
            ]
        );
        Ok(())
    }

    #[test]
    fn hostile_goal_states_are_refused() {
        let bomb = "<?xml version=\"1.0\"?><!DOCTYPE GoalState [<!ENTITY a \"aaaaaaaaaa\">\
            <!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\"><!ENTITY c \"&b;&b;&b;&b;&b;&b;&b;&b;\">]>\
            <GoalState><Incarnation>1</Incarnation><Container><ContainerId>&c;</ContainerId>\
            </Container></GoalState>";
        assert!(matches!(
            GoalState::parse(bomb.as_bytes()),
            Err(GoalStateError::Xml(_))
        ));
        let huge = format!("<GoalState>{}</GoalState>", " ".repeat(MAX_GOAL_STATE));
        assert!(matches!(
            GoalState::parse(huge.as_bytes()),
            Err(GoalStateError::TooLarge(_))
        ));
        let no_instance = GOOD.replace("<InstanceId>896a8f33.podvm-abc</InstanceId>", "");
        assert!(matches!(
            GoalState::parse(no_instance.as_bytes()),
            Err(GoalStateError::Missing(w)) if w.ends_with("InstanceId")
        ));
        let injected = GOOD.replace("896a8f33.podvm-abc", "x&lt;/InstanceId&gt;");
        assert!(matches!(
            GoalState::parse(injected.as_bytes()),
            Err(GoalStateError::BadValue(_))
        ));
        let long = GOOD.replace("896a8f33.podvm-abc", &"x".repeat(MAX_ID + 1));
        assert!(matches!(
            GoalState::parse(long.as_bytes()),
            Err(GoalStateError::BadValue(_))
        ));
        let incarnation = GOOD.replace("<Incarnation>7", "<Incarnation>7a");
        assert!(matches!(
            GoalState::parse(incarnation.as_bytes()),
            Err(GoalStateError::BadValue(_))
        ));
        let root = GOOD.replace("GoalState", "Goal");
        assert!(matches!(
            GoalState::parse(root.as_bytes()),
            Err(GoalStateError::Root(_))
        ));
        assert!(matches!(
            GoalState::parse(b"<GoalState>"),
            Err(GoalStateError::Xml(_))
        ));
    }
}
