//! The residency and placement policy, sans-IO: its file form (what operators write, TOML
//! or JSON), its checks, and the conversion to and from the wire `Policy`. The control
//! plane stores the wire form; the placement solver reads it every round.

use meridian_proto::catalog::Catalog;
use meridian_proto::control::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::fleet::Refusal;

/// The policy as an operator writes it (`meridianctl policy set FILE`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyFile {
    /// Most replica moves per placement round; 0: no limit.
    pub max_moves_per_round: u32,
    pub rules: Vec<RuleFile>,
    pub pins: Vec<PinFile>,
}

/// Where a model may be placed and served.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuleFile {
    pub model: String,
    /// Jurisdictions the model may be placed in; empty: any.
    pub allowed_jurisdictions: Vec<String>,
    /// Site label constraints, all of which a site must meet.
    pub constraints: Vec<ConstraintFile>,
    /// Spread: the model's replicas at at least this many distinct sites.
    pub min_sites: u32,
}

/// A condition on a site label: `op` is `in` or `notIn`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConstraintFile {
    pub key: String,
    pub op: String,
    #[serde(default)]
    pub values: Vec<String>,
}

/// At least `min_replicas` of `model` at `site`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinFile {
    pub model: String,
    pub site: String,
    pub min_replicas: u32,
}

impl PolicyFile {
    /// Parses TOML, or JSON when the text starts with `{`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| format!("invalid policy JSON: {e}"))
        } else {
            toml::from_str(text).map_err(|e| format!("invalid policy TOML: {e}"))
        }
    }

    /// The wire form at `revision` (the revision the caller read).
    pub fn to_pb(&self, revision: u64) -> Result<pb::Policy, String> {
        let mut rules = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            let mut constraints = Vec::new();
            for (j, c) in r.constraints.iter().enumerate() {
                let op = match c.op.as_str() {
                    "in" | "In" | "IN" => pb::LabelOperator::In,
                    "notIn" | "not_in" | "NotIn" | "NOT_IN" => pb::LabelOperator::NotIn,
                    other => {
                        return Err(format!(
                            "rules[{i}].constraints[{j}].op {other:?}: use \"in\" or \"notIn\""
                        ));
                    }
                };
                constraints.push(pb::LabelConstraint {
                    key: c.key.clone(),
                    op: op as i32,
                    values: c.values.clone(),
                });
            }
            rules.push(pb::ResidencyRule {
                model: r.model.clone(),
                allowed_jurisdictions: r.allowed_jurisdictions.clone(),
                constraints,
                min_sites: r.min_sites,
            });
        }
        Ok(pb::Policy {
            revision,
            rules,
            pins: self
                .pins
                .iter()
                .map(|p| pb::Pin {
                    model: p.model.clone(),
                    site: p.site.clone(),
                    min_replicas: p.min_replicas,
                })
                .collect(),
            max_moves_per_round: self.max_moves_per_round,
        })
    }

    /// The file form of a wire policy.
    pub fn from_pb(policy: &pb::Policy) -> Self {
        Self {
            max_moves_per_round: policy.max_moves_per_round,
            rules: policy
                .rules
                .iter()
                .map(|r| RuleFile {
                    model: r.model.clone(),
                    allowed_jurisdictions: r.allowed_jurisdictions.clone(),
                    constraints: r
                        .constraints
                        .iter()
                        .map(|c| ConstraintFile {
                            key: c.key.clone(),
                            op: if c.op == pb::LabelOperator::NotIn as i32 {
                                "notIn".into()
                            } else {
                                "in".into()
                            },
                            values: c.values.clone(),
                        })
                        .collect(),
                    min_sites: r.min_sites,
                })
                .collect(),
            pins: policy
                .pins
                .iter()
                .map(|p| PinFile {
                    model: p.model.clone(),
                    site: p.site.clone(),
                    min_replicas: p.min_replicas,
                })
                .collect(),
        }
    }
}

/// Checks a policy sent to `SetPolicy`; a refusal names the bad field.
pub fn check(catalog: &Catalog, policy: &pb::Policy) -> Result<(), Refusal> {
    let invalid = |m: String| Err(Refusal::Invalid(m));
    for (i, r) in policy.rules.iter().enumerate() {
        if r.model.is_empty() {
            return invalid(format!("rules[{i}].model is empty"));
        }
        if r.allowed_jurisdictions.iter().any(|j| j.is_empty()) {
            return invalid(format!(
                "rules[{i}].allowed_jurisdictions has an empty entry"
            ));
        }
        for (j, c) in r.constraints.iter().enumerate() {
            let known =
                c.op == pb::LabelOperator::In as i32 || c.op == pb::LabelOperator::NotIn as i32;
            if !known {
                return invalid(format!(
                    "rules[{i}].constraints[{j}].op is {}: use IN or NOT_IN",
                    c.op
                ));
            }
            if c.key.is_empty() {
                return invalid(format!("rules[{i}].constraints[{j}].key is empty"));
            }
        }
    }
    for (i, p) in policy.pins.iter().enumerate() {
        if p.model.is_empty() {
            return invalid(format!("pins[{i}].model is empty"));
        }
        if catalog.get(&p.site).is_none() {
            return invalid(format!("pins[{i}].site {:?} is not a catalog site", p.site));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_round_trip_and_bad_policies_name_the_field() {
        let text = r#"
max_moves_per_round = 4
[[rules]]
model = "m"
allowed_jurisdictions = ["EU"]
[[rules.constraints]]
key = "tier"
op = "notIn"
values = ["edge"]
[[pins]]
model = "m"
site = "AMS"
min_replicas = 1
"#;
        let file = PolicyFile::parse(text).unwrap();
        let wire = file.to_pb(3).unwrap();
        assert_eq!(wire.revision, 3);
        assert_eq!(
            wire.rules[0].constraints[0].op,
            pb::LabelOperator::NotIn as i32
        );
        check(Catalog::builtin(), &wire).unwrap();
        assert_eq!(PolicyFile::from_pb(&wire), file);
        let json = serde_json::to_string(&file).unwrap();
        assert_eq!(PolicyFile::parse(&json).unwrap(), file);

        let mut bad = wire.clone();
        bad.pins[0].site = "ZZZ".into();
        assert!(
            check(Catalog::builtin(), &bad)
                .unwrap_err()
                .to_string()
                .contains("pins[0].site")
        );
        let mut bad = wire.clone();
        bad.rules[0].constraints[0].op = 0;
        assert!(
            check(Catalog::builtin(), &bad)
                .unwrap_err()
                .to_string()
                .contains("rules[0].constraints[0].op")
        );
        let mut bad = wire;
        bad.rules[0].model.clear();
        assert!(
            check(Catalog::builtin(), &bad)
                .unwrap_err()
                .to_string()
                .contains("rules[0].model")
        );
        let mut file = file;
        file.rules[0].constraints[0].op = "near".into();
        assert!(file.to_pb(0).unwrap_err().contains("op \"near\""));
        assert!(PolicyFile::parse("max_moves_per_round = \"x\"").is_err());
    }
}
