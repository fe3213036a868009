//! Registration requests: what a department asks for through the portal (or its API),
//! pending until the postmaster approves, denies or asks a question.
//!
//! ```text
//! requests  id → network, hostname, department, admin, contact, purpose, volume, senders,
//!           requester, state, note (the postmaster's question or reason), created_at,
//!           updated_at
//! ```
//!
//! Every change of state is written with its history line and its mail (to the requester's
//! contact) in one transaction, as the registry's own changes are. An approval makes the
//! registration in that same transaction, through the rules `sluice registry add` follows.

use super::notice::{self, Wording};
use super::store::refuse;
use super::store::{Store, insert_registration, queue_notice, read_table, record};
use super::table::{Registration, Table, display, parse_network};
use crate::smtp::valid_address;
use crate::store::{Row, Sql, Value, params};
use ipnet::IpNet;
use sluice_mail::Address;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    network TEXT NOT NULL,
    hostname TEXT NOT NULL,
    department TEXT NOT NULL,
    admin TEXT NOT NULL,
    contact TEXT NOT NULL,
    purpose TEXT NOT NULL,
    volume TEXT NOT NULL,
    senders TEXT NOT NULL,
    requester TEXT NOT NULL,
    state TEXT NOT NULL,
    note TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_by_requester ON requests (requester);
";

/// Longest text kept in a field of a request: a name, an address, a sentence or two.
pub const MAX_FIELD: usize = 200;
/// Longest purpose: a paragraph.
pub const MAX_PURPOSE: usize = 2000;
/// Most sender addresses one request names.
pub const MAX_SENDERS: usize = 20;

/// The expected volumes a request chooses from, with the words the form shows.
pub const VOLUMES: [(&str, &str); 3] = [
    ("low", "Up to 100 messages a day"),
    ("medium", "100 to 1,000 messages a day"),
    ("high", "More than 1,000 messages a day"),
];

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    /// The postmaster asked a question; the requester answers by changing and resubmitting.
    NeedsInformation,
    Approved,
    Denied,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::NeedsInformation => "needs information",
            State::Approved => "approved",
            State::Denied => "denied",
        }
    }

    fn parse(text: &str) -> State {
        match text {
            "needs information" => State::NeedsInformation,
            "approved" => State::Approved,
            "denied" => State::Denied,
            _ => State::Pending,
        }
    }

    /// Still the requester's or the postmaster's to act on.
    pub fn open(self) -> bool {
        matches!(self, State::Pending | State::NeedsInformation)
    }
}

/// What a department fills in (the form, the API), as typed.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct Form {
    pub network: String,
    pub hostname: String,
    pub department: String,
    pub admin: String,
    pub contact: String,
    pub purpose: String,
    pub volume: String,
    /// One address per line (or separated by commas or spaces).
    pub senders: String,
}

/// A request as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Request {
    pub id: i64,
    #[serde(serialize_with = "network_text")]
    pub network: IpNet,
    pub hostname: String,
    pub department: String,
    pub admin: String,
    pub contact: String,
    pub purpose: String,
    pub volume: String,
    pub senders: Vec<String>,
    /// Who asked: the signed-in identity.
    pub requester: String,
    #[serde(serialize_with = "state_text")]
    pub state: State,
    /// The postmaster's question or reason for a denial.
    pub note: String,
    pub created_at: u64,
    pub updated_at: u64,
}

fn network_text<S: serde::Serializer>(network: &IpNet, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&display(network))
}

fn state_text<S: serde::Serializer>(state: &State, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(state.as_str())
}

/// The networks that may be registered: the campus, less the workstations. Taken from the
/// chain's `campus-access` module, which refuses everything else anyway.
#[derive(Debug, Clone, Default)]
pub struct Space {
    /// Empty: no campus is configured, and any address may be asked for.
    pub campus: Vec<IpNet>,
    pub workstations: Vec<IpNet>,
}

/// Why a request or a registration was refused: each problem, by the field it is about.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Problems(pub Vec<(&'static str, String)>);

impl Problems {
    fn add(&mut self, field: &'static str, problem: impl Into<String>) {
        self.0.push((field, problem.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let said: Vec<String> = self.0.iter().map(|(k, p)| format!("{k}: {p}")).collect();
        f.write_str(&said.join("; "))
    }
}

impl std::error::Error for Problems {}

/// A text field as typed: trimmed, not empty, at most `max` characters, no control
/// characters but line ends (what is shown in a terminal by `sluice registry` must not
/// carry escapes).
pub fn check_text(value: &str, max: usize) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        Err("must not be empty".into())
    } else if value.chars().count() > max {
        Err(format!("is longer than {max} characters"))
    } else if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\r')
    {
        Err("contains control characters".into())
    } else {
        Ok(value.to_string())
    }
}

/// A contact address: one mailbox, as a notice is sent to it.
pub fn check_contact(contact: &str) -> Result<(), String> {
    if valid_address(contact) && Address::parse(contact).is_some() {
        Ok(())
    } else {
        Err(format!("{contact:?} is not an email address (user@domain)"))
    }
}

/// Whether `network` may be registered now: inside the campus, outside the workstations,
/// not overlapping a block (the block's reason is given), nor a registration.
pub fn check_network(network: &IpNet, table: &Table, space: &Space) -> Result<(), String> {
    let overlaps = |other: &IpNet| other.contains(network) || network.contains(other);
    if let Some(block) = table.blocks().iter().find(|b| overlaps(&b.network)) {
        return Err(format!(
            "{} is blocked by the postmaster: {}",
            display(&block.network),
            block.reason
        ));
    }
    if !space.campus.is_empty() && !space.campus.iter().any(|c| c.contains(network)) {
        return Err(format!(
            "{} is outside the campus network; only campus systems may relay",
            display(network)
        ));
    }
    if let Some(w) = space.workstations.iter().find(|w| overlaps(w)) {
        return Err(format!(
            "{} is in the workstation range {}; workstations send with their own accounts",
            display(network),
            display(w)
        ));
    }
    if let Some(r) = table.registrations().iter().find(|r| overlaps(&r.network)) {
        return Err(format!(
            "{} is already registered (as {})",
            display(network),
            display(&r.network)
        ));
    }
    Ok(())
}

impl Form {
    /// The request this form makes, or every problem with it. `table` and `space` are the
    /// registry and the campus as they stand.
    pub fn check(&self, table: &Table, space: &Space) -> Result<Checked, Problems> {
        let mut problems = Problems::default();
        let network = match parse_network(self.network.trim()) {
            Ok(network) => {
                if let Err(e) = check_network(&network, table, space) {
                    problems.add("network", e);
                }
                Some(network)
            }
            Err(e) => {
                problems.add("network", e);
                None
            }
        };
        let mut text = |field: &'static str, value: &str, max: usize| {
            let value = value.trim();
            if value.is_empty() {
                problems.add(field, "must not be empty");
            } else if value.chars().count() > max {
                problems.add(field, format!("is longer than {max} characters"));
            } else if value
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\r')
            {
                problems.add(field, "contains control characters");
            }
            value.to_string()
        };
        let hostname = text("hostname", &self.hostname, MAX_FIELD);
        let department = text("department", &self.department, MAX_FIELD);
        let admin = text("admin", &self.admin, MAX_FIELD);
        let contact = text("contact", &self.contact, MAX_FIELD);
        let purpose = text("purpose", &self.purpose, MAX_PURPOSE);
        if !contact.is_empty()
            && let Err(e) = check_contact(&contact)
        {
            problems.add("contact", e);
        }
        if !VOLUMES.iter().any(|(v, _)| *v == self.volume) {
            problems.add("volume", "choose one of the volumes listed");
        }
        let senders: Vec<String> = self
            .senders
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if senders.is_empty() {
            problems.add("senders", "name the sender addresses the system will use");
        } else if senders.len() > MAX_SENDERS {
            problems.add("senders", format!("at most {MAX_SENDERS} addresses"));
        } else if let Some(bad) = senders.iter().find(|s| check_contact(s).is_err()) {
            problems.add("senders", format!("{bad:?} is not an email address"));
        }
        match network {
            Some(network) if problems.is_empty() => Ok(Checked {
                network,
                hostname,
                department,
                admin,
                contact,
                purpose,
                volume: self.volume.clone(),
                senders,
            }),
            _ => Err(problems),
        }
    }
}

/// A form that passed [`Form::check`].
#[derive(Debug, Clone)]
pub struct Checked {
    network: IpNet,
    hostname: String,
    department: String,
    admin: String,
    contact: String,
    purpose: String,
    volume: String,
    senders: Vec<String>,
}

impl Checked {
    /// The form's columns in the requests table's order (network … senders: `?1` to `?8`),
    /// then `more` (`?9`, `?10`).
    fn columns_then(&self, more: [Value; 2]) -> Vec<Value> {
        let mut values = params![
            self.network.to_string(),
            &self.hostname,
            &self.department,
            &self.admin,
            &self.contact,
            &self.purpose,
            &self.volume,
            self.senders.join("\n"),
        ]
        .to_vec();
        values.extend(more);
        values
    }
}

/// What the postmaster decides about a request.
#[derive(Debug, Clone)]
pub enum Decision {
    Approve,
    Deny { reason: String },
    Ask { question: String },
}

impl Store {
    /// Records a new pending request from `requester`; its id.
    pub fn submit_request(&mut self, form: &Checked, requester: &str) -> anyhow::Result<i64> {
        let actor = &self.actor;
        self.db.write(|tx| {
            let now = crate::queue::now() as i64;
            no_open_request_for(tx, &form.network, None)?;
            let inserted = tx.query_one(
                "INSERT INTO requests (network, hostname, department, admin, contact, purpose,
                     volume, senders, requester, state, note, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'pending', '', ?10, ?10)
                 RETURNING id",
                &form.columns_then([requester.into(), now.into()]),
            )?;
            let id = inserted
                .ok_or_else(|| anyhow::anyhow!("the new request has no id"))?
                .int(0)?;
            let detail = format!("request #{id}: {}, {}", form.hostname, form.department);
            record(tx, actor, "request", &form.network, &detail)?;
            Ok(id)
        })
    }

    /// The requester's answer to a question: the request as changed, pending again.
    pub fn resubmit_request(&mut self, id: i64, form: &Checked) -> anyhow::Result<()> {
        let actor = &self.actor;
        self.db.write(|tx| {
            no_open_request_for(tx, &form.network, Some(id))?;
            let changed = tx.execute(
                "UPDATE requests SET network = ?1, hostname = ?2, department = ?3, admin = ?4,
                     contact = ?5, purpose = ?6, volume = ?7, senders = ?8, state = 'pending',
                     updated_at = ?10
                 WHERE id = ?9 AND state = 'needs information'",
                &form.columns_then([id.into(), (crate::queue::now() as i64).into()]),
            )?;
            if changed == 0 {
                refuse!("request #{id} is not waiting for an answer");
            }
            record(
                tx,
                actor,
                "answer",
                &form.network,
                &format!("request #{id}"),
            )
        })
    }

    /// One request.
    pub fn request(&mut self, id: i64) -> anyhow::Result<Option<Request>> {
        request_by_id(&mut self.db, id)
    }

    /// Requests, newest first: `requester`'s, or everyone's; only open ones if `open`.
    pub fn requests(
        &mut self,
        requester: Option<&str>,
        open: bool,
    ) -> anyhow::Result<Vec<Request>> {
        let rows = self.db.query(
            &format!(
                "{SELECT} WHERE (CAST(?1 AS TEXT) IS NULL OR requester = ?1)
                     AND (?2 = 0 OR state IN ('pending', 'needs information'))
                 ORDER BY id DESC"
            ),
            params![requester, i64::from(open)],
        )?;
        Ok(rows.iter().filter_map(request_of).collect())
    }

    /// Carries out the postmaster's decision on an open request, with its mail: the
    /// registration and its confirmation, the denial with its reason, or the question.
    pub fn decide(
        &mut self,
        id: i64,
        decision: &Decision,
        space: &Space,
        wording: &Wording<'_>,
    ) -> anyhow::Result<Request> {
        let actor = &self.actor;
        self.db.write(|tx| {
            // Read under the write lock: nothing overlapping can be registered in between.
            let table = read_table(tx)?;
            let Some(mut request) = request_by_id(tx, id)? else {
                refuse!("no request #{id}");
            };
            if request.state != State::Pending {
                refuse!("request #{id} is {}, not pending", request.state.as_str());
            }
            let now = crate::queue::now();
            let (state, note, action) = match decision {
                Decision::Approve => {
                    // The rules as they stand now, not as they stood when it was asked.
                    if let Err(rule) = check_network(&request.network, &table, space) {
                        refuse!("{rule}");
                    }
                    let registration = Registration {
                        network: request.network,
                        admin: request.admin.clone(),
                        contact: request.contact.clone(),
                        department: request.department.clone(),
                        purpose: format!("{} ({})", request.purpose, request.hostname),
                        registered_at: now,
                        last_relayed_at: None,
                    };
                    let confirmation = notice::confirmation(&registration, wording);
                    insert_registration(tx, actor, &registration, &confirmation)?;
                    (State::Approved, String::new(), "approve")
                }
                Decision::Deny { reason } => {
                    let reason = required(reason, "the reason", MAX_PURPOSE)?;
                    queue_notice(tx, &notice::denied(&request, &reason, wording))?;
                    (State::Denied, reason, "deny")
                }
                Decision::Ask { question } => {
                    let question = required(question, "the question", MAX_PURPOSE)?;
                    queue_notice(tx, &notice::question(&request, &question, wording))?;
                    (State::NeedsInformation, question, "ask")
                }
            };
            tx.execute(
                "UPDATE requests SET state = ?2, note = ?3, updated_at = ?4 WHERE id = ?1",
                params![id, state.as_str(), &note, now as i64],
            )?;
            let detail = if note.is_empty() {
                format!("request #{id}")
            } else {
                format!("request #{id}: {note}")
            };
            record(tx, actor, action, &request.network, &detail)?;
            request.state = state;
            request.note = note;
            request.updated_at = now;
            Ok(request)
        })
    }

    /// Changes what a registration says about itself (not its address or admin), if it
    /// is `owner`'s when one is given; false when there is no such registration.
    pub fn update_registration(
        &mut self,
        network: &IpNet,
        owner: Option<&str>,
        contact: &str,
        department: &str,
        purpose: &str,
    ) -> anyhow::Result<bool> {
        let contact = required(contact, "the contact", MAX_FIELD)?;
        if let Err(e) = check_contact(&contact) {
            refuse!("contact: {e}");
        }
        let department = required(department, "the department", MAX_FIELD)?;
        let purpose = required(purpose, "the purpose", MAX_PURPOSE)?;
        let actor = &self.actor;
        self.db.write(|tx| {
            let changed = tx.execute(
                "UPDATE registrations SET contact = ?3, department = ?4, purpose = ?5
                 WHERE network = ?1 AND (CAST(?2 AS TEXT) IS NULL OR lower(admin) = lower(?2))",
                params![network.to_string(), owner, &contact, &department, &purpose],
            )? > 0;
            if changed {
                let detail =
                    format!("contact={contact}, department={department}, purpose={purpose}");
                record(tx, actor, "change", network, &detail)?;
            }
            Ok(changed)
        })
    }

    /// Hands a registration (`owner`'s, when one is given) to another admin of record;
    /// false when there is no such registration.
    pub fn transfer(
        &mut self,
        network: &IpNet,
        owner: Option<&str>,
        admin: &str,
    ) -> anyhow::Result<bool> {
        let admin = required(admin, "the new admin of record", MAX_FIELD)?;
        let actor = &self.actor;
        self.db.write(|tx| {
            let Some(previous) = tx.query_one(
                "SELECT admin FROM registrations
                 WHERE network = ?1 AND (CAST(?2 AS TEXT) IS NULL OR lower(admin) = lower(?2))",
                params![network.to_string(), owner],
            )?
            else {
                return Ok(false);
            };
            tx.execute(
                "UPDATE registrations SET admin = ?2 WHERE network = ?1",
                params![network.to_string(), &admin],
            )?;
            let detail = format!("admin {} → {admin}", previous.text(0)?);
            record(tx, actor, "transfer", network, &detail)?;
            Ok(true)
        })
    }
}

/// `text` by [`check_text`]'s rules, or a refusal naming `what`.
fn required(text: &str, what: &str, max: usize) -> anyhow::Result<String> {
    match check_text(text, max) {
        Ok(text) => Ok(text),
        Err(problem) => refuse!("{what} {problem}"),
    }
}

/// Refuses when a request for `network` other than `except` is under review: one open
/// request an address.
fn no_open_request_for(
    tx: &mut dyn Sql,
    network: &IpNet,
    except: Option<i64>,
) -> anyhow::Result<()> {
    if let Some(open) = tx.query_one(
        "SELECT id FROM requests WHERE network = ?1 AND id IS DISTINCT FROM ?2
             AND state IN ('pending', 'needs information')",
        params![network.to_string(), except],
    )? {
        refuse!(
            "{} has a request under review already (#{})",
            display(network),
            open.int(0)?
        );
    }
    Ok(())
}

const SELECT: &str = "SELECT id, network, hostname, department, admin, contact, purpose, volume,
    senders, requester, state, note, created_at, updated_at FROM requests";

fn request_by_id(sql: &mut dyn Sql, id: i64) -> anyhow::Result<Option<Request>> {
    let row = sql.query_one(&format!("{SELECT} WHERE id = ?1"), params![id])?;
    Ok(row.as_ref().and_then(request_of))
}

/// A row of [`SELECT`]; a row whose network was edited into nonsense is skipped.
fn request_of(row: &Row) -> Option<Request> {
    Some(Request {
        id: row.int(0).ok()?,
        network: parse_network(&row.text(1).ok()?).ok()?,
        hostname: row.text(2).ok()?,
        department: row.text(3).ok()?,
        admin: row.text(4).ok()?,
        contact: row.text(5).ok()?,
        purpose: row.text(6).ok()?,
        volume: row.text(7).ok()?,
        senders: row.text(8).ok()?.lines().map(str::to_string).collect(),
        requester: row.text(9).ok()?,
        state: State::parse(&row.text(10).ok()?),
        note: row.text(11).ok()?,
        created_at: row.time(12).ok()?,
        updated_at: row.time(13).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Location;
    use crate::store::testing::on_each_engine;

    on_each_engine!(
        a_request_is_approved_denied_or_questioned_with_its_mail,
        an_approval_follows_the_rules_as_they_stand
    );
    use crate::registry::table::Block;

    fn form(network: &str) -> Form {
        Form {
            network: network.into(),
            hostname: "printer-3.physics.example.edu".into(),
            department: "Physics".into(),
            admin: "jdoe@example.edu".into(),
            contact: "jdoe@example.edu".into(),
            purpose: "scan to e-mail".into(),
            volume: "low".into(),
            senders: "copier@physics.example.edu".into(),
        }
    }

    fn space() -> Space {
        Space {
            campus: vec!["10.0.0.0/8".parse().unwrap()],
            workstations: vec!["10.128.0.0/9".parse().unwrap()],
        }
    }

    fn wording() -> Wording<'static> {
        Wording {
            hostname: "relay.example.edu",
            how_to_change: "Use the portal.",
        }
    }

    #[test]
    fn a_form_is_checked_against_the_campus_the_blocks_and_the_registry() {
        let table = Table::new(
            vec![Registration {
                network: "10.1.0.0/24".parse().unwrap(),
                admin: "a".into(),
                contact: "a@example.edu".into(),
                department: "d".into(),
                purpose: "p".into(),
                registered_at: 0,
                last_relayed_at: None,
            }],
            vec![Block {
                network: "10.2.0.0/16".parse().unwrap(),
                reason: "sent spam in March".into(),
                blocked_at: 0,
            }],
        );
        assert!(form("10.3.0.1").check(&table, &space()).is_ok());
        let refused = |network: &str| {
            form(network)
                .check(&table, &space())
                .unwrap_err()
                .to_string()
        };
        assert!(refused("10.2.3.4").contains("blocked by the postmaster: sent spam in March"));
        assert!(
            refused("10.0.0.0/8").contains("blocked"),
            "a wider network overlaps"
        );
        assert!(refused("192.0.2.1").contains("outside the campus"));
        assert!(refused("10.200.0.1").contains("workstation range 10.128.0.0/9"));
        assert!(refused("10.1.0.7").contains("already registered (as 10.1.0.0/24)"));
        assert!(refused("nonsense").starts_with("network:"));
        let mut bad = form("10.3.0.1");
        bad.contact = "not an address".into();
        bad.volume = "lots".into();
        bad.senders = "x@y, nobody".into();
        bad.purpose = " ".into();
        let problems = bad.check(&table, &space()).unwrap_err();
        let fields: Vec<&str> = problems.0.iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, ["purpose", "contact", "volume", "senders"]);
    }

    fn a_request_is_approved_denied_or_questioned_with_its_mail(location: &Location) {
        let mut store = Store::open(location).unwrap();
        let table = Table::default();
        let checked = form("10.3.0.1").check(&table, &space()).unwrap();
        let id = store.submit_request(&checked, "jdoe@example.edu").unwrap();
        assert!(
            store.submit_request(&checked, "other@example.edu").is_err(),
            "one open request per network"
        );
        let asked = Decision::Ask {
            question: "Which floor?".into(),
        };
        store.decide(id, &asked, &space(), &wording()).unwrap();
        assert!(
            store
                .decide(id, &Decision::Approve, &space(), &wording())
                .is_err(),
            "a request waiting for its requester cannot be approved"
        );
        store.resubmit_request(id, &checked).unwrap();
        let approved = store
            .decide(id, &Decision::Approve, &space(), &wording())
            .unwrap();
        assert_eq!(approved.state, State::Approved);
        assert!(
            store
                .table()
                .unwrap()
                .registration("10.3.0.1".parse().unwrap())
                .is_some()
        );
        // Changed only by its admin of record (or a postmaster, who names no owner).
        let network = "10.3.0.1/32".parse().unwrap();
        let mallory = Some("mallory@example.edu");
        assert!(
            !store
                .transfer(&network, mallory, "mallory@example.edu")
                .unwrap()
        );
        assert!(store.unregister(&network, mallory).unwrap().is_none());
        let owner = Some("JDOE@example.edu");
        assert!(
            store
                .update_registration(&network, owner, "it@example.edu", "Physics", "copier")
                .unwrap()
        );
        let escape =
            store.update_registration(&network, None, "it@example.edu", "Physics\x1b[2J", "copier");
        assert!(
            escape
                .unwrap_err()
                .to_string()
                .contains("control characters")
        );
        let mail: Vec<String> = store
            .outbox()
            .unwrap()
            .into_iter()
            .map(|(_, n)| n.subject)
            .collect();
        assert_eq!(mail.len(), 2, "{mail:?}");
        assert!(mail[0].contains("question"), "{mail:?}");
        assert!(mail[1].contains("may now relay"), "{mail:?}");

        let second = form("10.3.0.2").check(&table, &space()).unwrap();
        let id = store.submit_request(&second, "jdoe@example.edu").unwrap();
        let deny = Decision::Deny {
            reason: "Use the authenticated service".into(),
        };
        store.decide(id, &deny, &space(), &wording()).unwrap();
        let denied = store.request(id).unwrap().unwrap();
        assert_eq!(
            (denied.state, denied.note.as_str()),
            (State::Denied, "Use the authenticated service")
        );
        assert_eq!(
            store
                .requests(Some("jdoe@example.edu"), true)
                .unwrap()
                .len(),
            0
        );
        assert_eq!(
            store
                .requests(Some("jdoe@example.edu"), false)
                .unwrap()
                .len(),
            2
        );
        assert!(
            store
                .requests(Some("other@example.edu"), false)
                .unwrap()
                .is_empty()
        );
        let actions: Vec<String> = store
            .history(None)
            .unwrap()
            .into_iter()
            .map(|c| c.action)
            .collect();
        assert_eq!(
            actions,
            [
                "request", "ask", "answer", "register", "approve", "change", "request", "deny"
            ]
        );
    }

    fn an_approval_follows_the_rules_as_they_stand(location: &Location) {
        let mut store = Store::open(location).unwrap();
        let checked = form("10.3.0.1").check(&Table::default(), &space()).unwrap();
        let id = store.submit_request(&checked, "jdoe@example.edu").unwrap();
        store
            .block(&"10.3.0.0/16".parse().unwrap(), "compromised subnet", 1)
            .unwrap();
        let refused = store
            .decide(id, &Decision::Approve, &space(), &wording())
            .unwrap_err();
        assert!(
            refused.to_string().contains("compromised subnet"),
            "{refused}"
        );
        assert_eq!(store.request(id).unwrap().unwrap().state, State::Pending);
        assert!(store.table().unwrap().registrations().is_empty());
    }
}
