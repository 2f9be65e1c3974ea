//! `kubectl credits`: the credits admin's everyday flows in the terminal,
//! read from the resources' status and written as spec or status patches.

use std::io::{BufRead, Write};

use clap::{Parser, Subcommand, ValueEnum};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde::Serialize;
use serde_json::{json, Value};

use crate::amount::Amount;
use crate::crd::{CreditAccount, CreditGroup, CreditRequest, MemberAllocation, RESET_ANNOTATION};

/// The field manager of the plugin's patches.
const MANAGER: &str = "kubectl-credits";

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-credits",
    about = "Credit budgets of a namespace: the dashboard and the admin's hands",
    version
)]
pub struct Cli {
    /// Namespace (default: the context's).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Kubeconfig context.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Output of reads.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "table")]
    pub output: Output,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// The account's cycle, limit, usage and allocation per group.
    Overview { account: Option<String> },
    /// Groups: monthly, extra, distributed, available, auto-approve, used, members.
    Groups,
    /// Members with their allocation and usage.
    Members {
        #[arg(long)]
        group: Option<String>,
        /// Matches name or email, case-insensitive.
        #[arg(long)]
        search: Option<String>,
        #[arg(long, default_value = "1")]
        page: usize,
        #[arg(long, default_value = "50")]
        page_size: usize,
    },
    /// Credit requests.
    Requests {
        #[arg(long, value_parser = ["Pending", "Approved", "Denied", "AutoApproved"])]
        status: Option<String>,
    },
    /// Approve a request (optionally fewer credits than asked).
    Approve {
        request: String,
        #[arg(long)]
        credits: Option<String>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deny a request.
    Deny {
        request: String,
        #[arg(long)]
        reason: String,
    },
    /// Set a member's monthly (and extra) credits.
    SetAllocation {
        member: String,
        #[arg(long)]
        monthly: String,
        #[arg(long)]
        extra: Option<String>,
    },
    /// Set the account's credits per cycle (applies at once).
    SetLimit {
        account: String,
        credits: String,
        #[arg(long)]
        yes: bool,
    },
    /// Set the cycle cadence (starts a new cycle at once).
    SetCadence {
        account: String,
        cadence: String,
        #[arg(long)]
        yes: bool,
    },
    /// Set the credit factor (credits per $1; 0 disables tracking).
    SetFactor { account: String, factor: String },
    /// Set the signup credits of new members.
    SetSignup { account: String, credits: String },
    /// Start a new cycle now.
    ResetCycle {
        account: String,
        #[arg(long)]
        yes: bool,
    },
}

/// What went wrong, for the user.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("{0}")]
    Message(String),
    #[error("{0}")]
    Kube(#[from] kube::Error),
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
}

fn fail(message: impl Into<String>) -> PluginError {
    PluginError::Message(message.into())
}

/// Explains an API refusal in the words of this command.
fn explain(e: kube::Error, what: &str, ns: &str) -> PluginError {
    match &e {
        kube::Error::Api(s) if s.code == 403 => fail(format!(
            "you may not {what} in namespace {ns}: ask for the RBAC role ({})",
            s.message
        )),
        kube::Error::Api(s) if s.code == 404 => fail(format!("not found in namespace {ns}: {}", s.message)),
        kube::Error::Api(s) if s.code == 422 => fail(format!("refused: {}", s.message)),
        _ => PluginError::Kube(e),
    }
}

/// A table printed like kubectl's: upper-case headers, columns padded
/// with three spaces.
fn table(headers: &[&str], rows: &[Vec<String>], out: &mut dyn Write) -> std::io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len() - 1;
        cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    c
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("   ")
    };
    writeln!(
        out,
        "{}",
        line(headers.iter().map(|h| h.to_string()).collect()).trim_end()
    )?;
    for row in rows {
        writeln!(out, "{}", line(row.clone()).trim_end())?;
    }
    Ok(())
}

fn structured(value: &impl Serialize, output: Output, out: &mut dyn Write) -> Result<(), PluginError> {
    match output {
        Output::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(value).map_err(|e| fail(e.to_string()))?
        )?,
        _ => {
            // Through JSON text: serde_json's exact numbers would otherwise
            // reach YAML as their private wrapper.
            let text = serde_json::to_string(value).map_err(|e| fail(e.to_string()))?;
            let yaml: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| fail(e.to_string()))?;
            write!(
                out,
                "{}",
                serde_yaml::to_string(&yaml).map_err(|e| fail(e.to_string()))?
            )?
        }
    }
    Ok(())
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn bar(percent: &str, colour: bool) -> String {
    let p: f64 = percent.parse().unwrap_or(0.0);
    let filled = ((p / 100.0) * 20.0).round().clamp(0.0, 20.0) as usize;
    let body = format!("[{}{}]", "#".repeat(filled), ".".repeat(20 - filled));
    if !colour {
        return body;
    }
    let code = if p >= 90.0 {
        31
    } else if p >= 75.0 {
        33
    } else {
        32
    };
    format!("\x1b[{code}m{body}\x1b[0m")
}

fn confirm(question: &str, expected: &str, input: &mut dyn BufRead, out: &mut dyn Write) -> Result<bool, PluginError> {
    write!(out, "{question} ")?;
    out.flush()?;
    let mut answer = String::new();
    input.read_line(&mut answer)?;
    Ok(answer.trim() == expected)
}

fn amount(field: &str, text: &str) -> Result<Amount, PluginError> {
    Amount::parse_non_negative(text).map_err(|e| fail(format!("{field}: {e}")))
}

/// Runs one `kubectl credits` command against the API server, reading
/// confirmations from `input` and writing to `out`.
pub async fn run(
    cli: Cli,
    client: Client,
    namespace: &str,
    colour: bool,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<(), PluginError> {
    let mut session = Session {
        accounts: Api::namespaced(client.clone(), namespace),
        groups: Api::namespaced(client.clone(), namespace),
        members: Api::namespaced(client.clone(), namespace),
        requests: Api::namespaced(client.clone(), namespace),
        client,
        ns: namespace,
        output: cli.output,
        colour,
        input,
        out,
    };
    match cli.command {
        Cmd::Overview { account } => session.overview(account).await,
        Cmd::Groups => session.groups().await,
        Cmd::Members {
            group,
            search,
            page,
            page_size,
        } => session.members(group, search, page, page_size).await,
        Cmd::Requests { status } => session.requests(status).await,
        Cmd::Approve {
            request,
            credits,
            reason,
        } => session.approve(request, credits, reason).await,
        Cmd::Deny { request, reason } => session.deny(request, reason).await,
        Cmd::SetAllocation { member, monthly, extra } => session.set_allocation(member, monthly, extra).await,
        Cmd::SetLimit { account, credits, yes } => session.set_limit(account, credits, yes).await,
        Cmd::SetCadence { account, cadence, yes } => session.set_cadence(account, cadence, yes).await,
        Cmd::SetFactor { account, factor } => session.set_factor(account, factor).await,
        Cmd::SetSignup { account, credits } => session.set_signup(account, credits).await,
        Cmd::ResetCycle { account, yes } => session.reset_cycle(account, yes).await,
    }
}

/// One command's connection, namespace, output and terminal.
struct Session<'a> {
    client: Client,
    ns: &'a str,
    output: Output,
    colour: bool,
    input: &'a mut dyn BufRead,
    out: &'a mut dyn Write,
    accounts: Api<CreditAccount>,
    groups: Api<CreditGroup>,
    members: Api<MemberAllocation>,
    requests: Api<CreditRequest>,
}

impl Session<'_> {
    async fn overview(&mut self, account: Option<String>) -> Result<(), PluginError> {
        let Session {
            output,
            colour,
            out,
            accounts,
            ns,
            ..
        } = self;
        let ns: &str = ns;
        let lp = ListParams::default();
        let list = accounts
            .list(&lp)
            .await
            .map_err(|e| explain(e, "list creditaccounts", ns))?;
        let acct = match account {
            Some(name) => list
                .items
                .into_iter()
                .find(|a| a.name_any() == name)
                .ok_or_else(|| fail(format!("account {name} not found in namespace {ns}")))?,
            None => list
                .items
                .into_iter()
                .min_by_key(|a| a.metadata.creation_timestamp.as_ref().map(|t| t.0))
                .ok_or_else(|| fail(format!("no CreditAccount in namespace {ns}")))?,
        };
        let status = serde_json::to_value(&acct.status).unwrap_or(Value::Null);
        if *output != Output::Table {
            return structured(
                &json!({"name": acct.name_any(), "namespace": ns, "cadence": acct.spec.cadence, "status": status}),
                *output,
                out,
            );
        }
        let cycle = &status["cycle"];
        let left = cycle["end"]
            .as_str()
            .and_then(|e| e.parse::<jiff::Timestamp>().ok())
            .map(|end| {
                let secs = (end.as_second() - jiff::Timestamp::now().as_second()).max(0);
                format!("{}d {}h left", secs / 86_400, secs % 86_400 / 3_600)
            });
        writeln!(
            out,
            "Account:   {}/{}  (cadence {})",
            ns,
            acct.name_any(),
            acct.spec.cadence
        )?;
        writeln!(
            out,
            "Cycle:     {}  {} → {}  {}",
            s(&cycle["number"]),
            s(&cycle["start"]),
            s(&cycle["end"]),
            left.unwrap_or_default()
        )?;
        writeln!(out, "Limit:     {}", s(&status["creditsPerCycle"]))?;
        writeln!(out, "Used:      {}", s(&status["used"]))?;
        writeln!(out, "Balance:   {}", s(&status["balance"]))?;
        writeln!(
            out,
            "Usage:     {}% {}",
            s(&status["usagePercent"]),
            bar(&s(&status["usagePercent"]), *colour)
        )?;
        if status["trackingEnabled"] == json!(false) {
            writeln!(out, "Tracking:  disabled (creditFactor is 0)")?;
        }
        writeln!(
            out,
            "Allocated: {} of {} ({} unallocated)",
            s(&status["allocated"]),
            s(&status["creditsPerCycle"]),
            s(&status["unallocated"])
        )?;
        writeln!(out)?;
        let rows: Vec<Vec<String>> = status["allocationOverview"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|g| vec![s(&g["name"]), s(&g["budget"]), s(&g["used"])])
            .collect();
        table(&["GROUP", "BUDGET", "USED"], &rows, out)?;
        Ok(())
    }

    async fn groups(&mut self) -> Result<(), PluginError> {
        let Session {
            output,
            out,
            groups,
            ns,
            ..
        } = self;
        let ns: &str = ns;
        let lp = ListParams::default();
        let list = groups
            .list(&lp)
            .await
            .map_err(|e| explain(e, "list creditgroups", ns))?;
        let items: Vec<Value> = list.items.iter().map(|g| {
            let st = serde_json::to_value(&g.status).unwrap_or(Value::Null);
            json!({"name": g.name_any(), "monthly": g.spec.monthly_credits.to_string(), "extra": g.spec.extra_credits.to_string(),
                "distributed": st["distributed"], "available": st["available"], "autoApprove": st["autoApproveRemaining"],
                "autoApproveReserve": g.spec.auto_approve_reserve.to_string(), "used": st["used"], "members": st["members"]})
        }).collect();
        if *output != Output::Table {
            return structured(&items, *output, out);
        }
        let rows: Vec<Vec<String>> = items
            .iter()
            .map(|g| {
                vec![
                    s(&g["name"]),
                    s(&g["monthly"]),
                    s(&g["extra"]),
                    s(&g["distributed"]),
                    s(&g["available"]),
                    format!("{}/{}", s(&g["autoApprove"]), s(&g["autoApproveReserve"])),
                    s(&g["used"]),
                    s(&g["members"]),
                ]
            })
            .collect();
        table(
            &[
                "NAME",
                "MONTHLY",
                "EXTRA",
                "DISTRIBUTED",
                "AVAILABLE",
                "AUTO-APPROVE",
                "USED",
                "MEMBERS",
            ],
            &rows,
            out,
        )?;
        Ok(())
    }

    async fn members(
        &mut self,
        group: Option<String>,
        search: Option<String>,
        page: usize,
        page_size: usize,
    ) -> Result<(), PluginError> {
        let Session {
            output,
            out,
            members,
            ns,
            ..
        } = self;
        let ns: &str = ns;
        let lp = ListParams::default();
        if page == 0 || page_size == 0 {
            return Err(fail("--page and --page-size count from 1"));
        }
        let list = members
            .list(&lp)
            .await
            .map_err(|e| explain(e, "list memberallocations", ns))?;
        let needle = search.map(|s| s.to_lowercase());
        let mut items: Vec<Value> = list.items.iter().filter_map(|m| {
            let st = serde_json::to_value(&m.status).unwrap_or(Value::Null);
            let in_group = st["group"].as_str().or(m.spec.group.as_deref()).unwrap_or("default").to_string();
            if group.as_ref().is_some_and(|g| *g != in_group) {
                return None;
            }
            if let Some(n) = &needle {
                if !m.spec.user.name.to_lowercase().contains(n) && !m.spec.user.email.to_lowercase().contains(n) {
                    return None;
                }
            }
            Some(json!({"name": m.name_any(), "email": m.spec.user.email, "user": m.spec.user.id, "group": in_group,
                "monthly": st["monthlyCredits"], "extra": st["extraCredits"], "granted": st["granted"], "used": st["used"], "remaining": st["remaining"]}))
        }).collect();
        items.sort_by(|a, b| (s(&a["email"]), s(&a["user"])).cmp(&(s(&b["email"]), s(&b["user"]))));
        let total = items.len();
        let items: Vec<Value> = items.into_iter().skip((page - 1) * page_size).take(page_size).collect();
        if *output != Output::Table {
            return structured(
                &json!({"items": items, "page": page, "pageSize": page_size, "total": total}),
                *output,
                out,
            );
        }
        let rows: Vec<Vec<String>> = items
            .iter()
            .map(|m| {
                [
                    "name",
                    "email",
                    "group",
                    "monthly",
                    "extra",
                    "granted",
                    "used",
                    "remaining",
                ]
                .iter()
                .map(|k| s(&m[k]))
                .collect()
            })
            .collect();
        table(
            &[
                "NAME",
                "EMAIL",
                "GROUP",
                "MONTHLY",
                "EXTRA",
                "GRANTED",
                "USED",
                "REMAINING",
            ],
            &rows,
            out,
        )?;
        if total > page_size {
            writeln!(out, "page {page} of {} ({total} members)", total.div_ceil(page_size))?;
        }
        Ok(())
    }

    async fn requests(&mut self, status: Option<String>) -> Result<(), PluginError> {
        let Session {
            output,
            out,
            requests,
            ns,
            ..
        } = self;
        let ns: &str = ns;
        let lp = ListParams::default();
        let list = requests
            .list(&lp)
            .await
            .map_err(|e| explain(e, "list creditrequests", ns))?;
        let items: Vec<Value> = list.items.iter().filter_map(|r| {
            let st = serde_json::to_value(&r.status).unwrap_or(Value::Null);
            let phase = st["phase"].as_str().unwrap_or("Pending").to_string();
            if status.as_ref().is_some_and(|want| *want != phase) {
                return None;
            }
            Some(json!({"name": r.name_any(), "member": r.spec.member, "credits": r.spec.credits.to_string(), "approved": st["approvedCredits"],
                "phase": phase, "reason": r.spec.reason, "decidedBy": st["decidedBy"]}))
        }).collect();
        if *output != Output::Table {
            return structured(&items, *output, out);
        }
        let rows: Vec<Vec<String>> = items
            .iter()
            .map(|r| {
                ["name", "member", "credits", "approved", "phase", "reason"]
                    .iter()
                    .map(|k| s(&r[k]))
                    .collect()
            })
            .collect();
        table(
            &["NAME", "MEMBER", "CREDITS", "APPROVED", "PHASE", "REASON"],
            &rows,
            out,
        )?;
        Ok(())
    }

    async fn approve(
        &mut self,
        request: String,
        credits: Option<String>,
        reason: Option<String>,
    ) -> Result<(), PluginError> {
        let Session {
            client,
            out,
            requests,
            ns,
            ..
        } = self;
        let ns: &str = ns;
        let r = requests
            .get(&request)
            .await
            .map_err(|e| explain(e, "get creditrequests", ns))?;
        check_pending(&r)?;
        let mut approval = json!({"decision": "Approve"});
        if let Some(c) = credits {
            let c = amount("--credits", &c)?;
            crate::ledger::check_approval(r.spec.credits, Some(c)).map_err(|_| {
                fail(format!(
                    "--credits must be more than 0 and at most the {} requested",
                    r.spec.credits
                ))
            })?;
            approval["credits"] = json!(c.to_string());
        }
        if let Some(reason) = reason {
            approval["reason"] = json!(reason);
        }
        decide(client, requests, &request, approval, ns).await?;
        writeln!(out, "creditrequest/{request} approved")?;
        Ok(())
    }

    async fn deny(&mut self, request: String, reason: String) -> Result<(), PluginError> {
        let Session {
            client,
            out,
            requests,
            ns,
            ..
        } = self;
        let ns: &str = ns;
        let r = requests
            .get(&request)
            .await
            .map_err(|e| explain(e, "get creditrequests", ns))?;
        check_pending(&r)?;
        decide(
            client,
            requests,
            &request,
            json!({"decision": "Deny", "reason": reason}),
            ns,
        )
        .await?;
        writeln!(out, "creditrequest/{request} denied")?;
        Ok(())
    }

    async fn set_allocation(
        &mut self,
        member: String,
        monthly: String,
        extra: Option<String>,
    ) -> Result<(), PluginError> {
        let Session { out, members, ns, .. } = self;
        let ns: &str = ns;
        let mut spec = json!({"monthlyCredits": amount("--monthly", &monthly)?.to_string()});
        if let Some(e) = extra {
            spec["extraCredits"] = json!(amount("--extra", &e)?.to_string());
        }
        members
            .patch(
                &member,
                &PatchParams::apply(MANAGER),
                &Patch::Merge(&json!({"spec": spec})),
            )
            .await
            .map_err(|e| explain(e, "patch memberallocations", ns))?;
        writeln!(out, "memberallocation/{member} patched")?;
        Ok(())
    }

    async fn set_limit(&mut self, account: String, credits: String, yes: bool) -> Result<(), PluginError> {
        let c = amount("CREDITS", &credits)?;
        let question =
            format!("The new limit of {c} applies at once to the current cycle (used credits stay). Apply? [y/N]");
        let patch = json!({"spec": {"creditsPerCycle": c.to_string()}});
        self.patch_account(&account, patch, (!yes).then_some((question, "y")))
            .await
    }

    async fn set_cadence(&mut self, account: String, cadence: String, yes: bool) -> Result<(), PluginError> {
        crate::cycle::Cadence::parse(&cadence).map_err(|e| fail(format!("CADENCE: {e}")))?;
        let question =
            format!("Changing the cadence to {cadence} starts a new cycle now: used credits go to zero. Apply? [y/N]");
        let patch = json!({"spec": {"cadence": cadence}});
        self.patch_account(&account, patch, (!yes).then_some((question, "y")))
            .await
    }

    async fn set_factor(&mut self, account: String, factor: String) -> Result<(), PluginError> {
        let f = amount("FACTOR", &factor)?;
        self.patch_account(&account, json!({"spec": {"creditFactor": f.to_string()}}), None)
            .await
    }

    async fn set_signup(&mut self, account: String, credits: String) -> Result<(), PluginError> {
        let c = amount("CREDITS", &credits)?;
        self.patch_account(&account, json!({"spec": {"signupCredits": c.to_string()}}), None)
            .await
    }

    /// Patches an account, after `confirmation` (a question and the answer
    /// that confirms it) when one is asked for.
    async fn patch_account(
        &mut self,
        account: &str,
        patch: Value,
        confirmation: Option<(String, &str)>,
    ) -> Result<(), PluginError> {
        if let Some((question, expected)) = confirmation {
            if !confirm(&question, expected, self.input, self.out)? {
                return Err(fail("aborted"));
            }
        }
        patch_account(&self.accounts, account, patch, self.ns).await?;
        writeln!(self.out, "creditaccount/{account} patched")?;
        Ok(())
    }

    async fn reset_cycle(&mut self, account: String, yes: bool) -> Result<(), PluginError> {
        let Session {
            input,
            out,
            accounts,
            ns,
            ..
        } = self;
        let ns: &str = ns;
        writeln!(out, "A reset starts a fresh cycle now: credits used this cycle go to zero, grants end, the auto-approve reserve renews, and the next cycle end is counted from now. It cannot be undone.")?;
        if !yes
            && !confirm(
                &format!("Type the account name ({account}) to reset it:"),
                &account,
                input,
                out,
            )?
        {
            return Err(fail("aborted: nothing was reset"));
        }
        let now = jiff::Timestamp::now().to_string();
        patch_account(
            accounts,
            &account,
            json!({"metadata": {"annotations": {RESET_ANNOTATION: now}}}),
            ns,
        )
        .await?;
        writeln!(out, "creditaccount/{account} reset requested at {now}")?;
        Ok(())
    }
}

fn check_pending(r: &CreditRequest) -> Result<(), PluginError> {
    let status = r.status.as_ref();
    if let Some(phase) = status
        .and_then(|s| s.phase)
        .filter(|p| *p != crate::crd::RequestPhase::Pending)
    {
        return Err(fail(format!(
            "creditrequest/{} is already {phase:?}: a decision is final",
            r.name_any()
        )));
    }
    if status.is_some_and(|s| s.approval.is_some()) {
        return Err(fail(format!(
            "creditrequest/{} already has an approval: a decision is final",
            r.name_any()
        )));
    }
    Ok(())
}

/// Who the API server says the caller is (SelfSubjectReview), if it says.
async fn whoami(client: &Client) -> Option<String> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    Api::<SelfSubjectReview>::all(client.clone())
        .create(&Default::default(), &SelfSubjectReview::default())
        .await
        .ok()?
        .status?
        .user_info?
        .username
}

/// Sets `status.approval`, with the caller's username in `by`: where the
/// chart's mutating policy runs it stamps the same value, and where only
/// its validating policy runs it demands it.
async fn decide(
    client: &Client,
    api: &Api<CreditRequest>,
    name: &str,
    mut approval: Value,
    ns: &str,
) -> Result<(), PluginError> {
    if let Some(me) = whoami(client).await {
        approval["by"] = json!(me);
    }
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER),
        &Patch::Merge(&json!({"status": {"approval": approval}})),
    )
    .await
    .map(|_| ())
    .map_err(|e| explain(e, "patch creditrequests/status", ns))
}

async fn patch_account(api: &Api<CreditAccount>, name: &str, patch: Value, ns: &str) -> Result<(), PluginError> {
    api.patch(name, &PatchParams::apply(MANAGER), &Patch::Merge(&patch))
        .await
        .map(|_| ())
        .map_err(|e| explain(e, "patch creditaccounts", ns))
}
