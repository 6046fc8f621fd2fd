//! The Fargate node's set-up, checked at start and until it holds: an execution role,
//! AWS credentials the node's identity answers to (STS `GetCallerIdentity`), the ECS
//! cluster (`DescribeClusters`), the CloudWatch Logs group (`DescribeLogGroups`), and the
//! subnets and security groups (EC2 `DescribeSubnets`, `DescribeSecurityGroups`: they
//! exist, and in one VPC). Each problem is one sentence an operator can act on; the node
//! stays tainted while any remains.

use super::ec2_query::{Ec2Error, Found};

/// What the node needs to exist, and where.
#[derive(Clone, Debug)]
pub struct SetupTarget {
    /// ECS cluster.
    pub cluster: String,
    /// CloudWatch Logs group of the containers' output.
    pub log_group: String,
    /// Region.
    pub region: String,
    /// Whether a task execution role is configured.
    pub has_execution_role: bool,
    /// The tasks' subnets.
    pub subnets: Vec<String>,
    /// The tasks' security groups.
    pub security_groups: Vec<String>,
}

/// What EC2 said of the subnets and security groups: what it listed, or why not.
#[derive(Clone, Debug)]
pub struct NetworkAnswer {
    /// `DescribeSubnets`.
    pub subnets: Result<Vec<Found>, Ec2Error>,
    /// `DescribeSecurityGroups`.
    pub security_groups: Result<Vec<Found>, Ec2Error>,
}

/// Whether EC2 refused the node's identity the describe call itself: a missing
/// `ec2:Describe*` permission is a gap in what the check can see, not in the set-up.
fn may_not_describe(error: &Ec2Error) -> bool {
    matches!(error, Ec2Error::Refused { code, .. } if code == "UnauthorizedOperation" || code == "AccessDenied")
}

/// The problems with the subnets and security groups; a describe call the node may not
/// make is logged by the caller and not a problem.
pub fn network_problems(target: &SetupTarget, answer: &NetworkAnswer) -> Vec<String> {
    let region = &target.region;
    let mut problems = Vec::new();
    let mut subnet_vpcs: Vec<&str> = Vec::new();
    match &answer.subnets {
        Ok(found) => {
            for wanted in &target.subnets {
                match found.iter().find(|f| &f.id == wanted) {
                    Some(subnet) => subnet_vpcs.push(&subnet.vpc),
                    None => problems.push(format!(
                        "subnet {wanted} not found in {region} (--subnets, the chart's fargate.subnets)"
                    )),
                }
            }
            subnet_vpcs.sort_unstable();
            subnet_vpcs.dedup();
            if subnet_vpcs.len() > 1 {
                problems.push(format!(
                    "the subnets are in different VPCs ({}): a task's ENI and its security \
                     groups must share one VPC",
                    subnet_vpcs.join(", ")
                ));
            }
        }
        Err(error) if may_not_describe(error) => {}
        Err(Ec2Error::Refused { code, message }) if code.ends_with(".NotFound") => {
            problems.push(format!(
                "subnets not found in {region}: {message} (--subnets, the chart's fargate.subnets)"
            ))
        }
        Err(error) => problems.push(format!("cannot describe the subnets in {region}: {error}")),
    }
    match &answer.security_groups {
        Ok(found) => {
            for wanted in &target.security_groups {
                match found.iter().find(|f| &f.id == wanted) {
                    None => problems.push(format!(
                        "security group {wanted} not found in {region} (--security-groups, the \
                         chart's fargate.securityGroups)"
                    )),
                    Some(group) if subnet_vpcs.len() == 1 && group.vpc != subnet_vpcs[0] => {
                        problems.push(format!(
                            "security group {wanted} is in {}, the subnets in {}: RunTask \
                             refuses a group of another VPC",
                            group.vpc, subnet_vpcs[0]
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        Err(error) if may_not_describe(error) => {}
        Err(Ec2Error::Refused { code, message }) if code.ends_with(".NotFound") => {
            problems.push(format!(
                "security groups not found in {region}: {message} (--security-groups, the \
                 chart's fargate.securityGroups)"
            ))
        }
        Err(error) => problems.push(format!(
            "cannot describe the security groups in {region}: {error}"
        )),
    }
    problems
}

/// The describe calls the node may not make, for a warning: the check cannot see those.
pub fn unchecked(answer: &NetworkAnswer) -> Vec<&'static str> {
    let mut unchecked = Vec::new();
    if answer.subnets.as_ref().is_err_and(may_not_describe) {
        unchecked.push("ec2:DescribeSubnets");
    }
    if answer.security_groups.as_ref().is_err_and(may_not_describe) {
        unchecked.push("ec2:DescribeSecurityGroups");
    }
    unchecked
}

/// The problem, if any, with no execution role configured: Fargate cannot send a
/// container's output to CloudWatch (`awslogs`) or read its secrets without one.
pub fn execution_role_problem(target: &SetupTarget) -> Option<String> {
    (!target.has_execution_role).then(|| {
        "no task execution role (--execution-role-arn, the chart's fargate.executionRoleArn): \
         Fargate needs one to send container output to CloudWatch Logs and read secrets, \
         so every pod would fail to start"
            .to_owned()
    })
}

/// What `DescribeClusters` said of the cluster: its status, or the failure's reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterAnswer {
    /// Found, with this status (`ACTIVE`, `INACTIVE`, …).
    Found(String),
    /// Listed as a failure with this reason (`MISSING`).
    Failed(String),
}

/// The problem, if any, with the ECS cluster.
pub fn cluster_problem(target: &SetupTarget, answer: &ClusterAnswer) -> Option<String> {
    let (cluster, region) = (&target.cluster, &target.region);
    match answer {
        ClusterAnswer::Found(status) if status == "ACTIVE" => None,
        ClusterAnswer::Found(status) => Some(format!(
            "ECS cluster {cluster} in {region} is {status}, not ACTIVE"
        )),
        ClusterAnswer::Failed(reason) if reason == "MISSING" => Some(format!(
            "ECS cluster {cluster} not found in {region}: create it \
             (aws ecs create-cluster --cluster-name {cluster} --region {region}) or set \
             --ecs-cluster"
        )),
        ClusterAnswer::Failed(reason) => Some(format!(
            "ECS cluster {cluster} in {region} cannot be used: {reason}"
        )),
    }
}

/// The problem, if any, with the log group, from the names `DescribeLogGroups` listed
/// for its name as a prefix.
pub fn log_group_problem(target: &SetupTarget, listed: &[String]) -> Option<String> {
    let (group, region) = (&target.log_group, &target.region);
    (!listed.iter().any(|name| name == group)).then(|| {
        format!(
            "CloudWatch Logs group {group} not found in {region}: create it \
             (aws logs create-log-group --log-group-name {group} --region {region}) or set \
             --log-group"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> SetupTarget {
        SetupTarget {
            cluster: "burst".into(),
            log_group: "/spillway/pods".into(),
            region: "eu-west-1".into(),
            has_execution_role: true,
            subnets: vec!["subnet-a".into(), "subnet-b".into()],
            security_groups: vec!["sg-1".into()],
        }
    }

    fn found(id: &str, vpc: &str) -> Found {
        Found {
            id: id.into(),
            vpc: vpc.into(),
        }
    }

    #[test]
    fn subnets_and_groups_must_exist_in_one_vpc() {
        let good = NetworkAnswer {
            subnets: Ok(vec![found("subnet-a", "vpc-1"), found("subnet-b", "vpc-1")]),
            security_groups: Ok(vec![found("sg-1", "vpc-1")]),
        };
        assert_eq!(network_problems(&target(), &good), Vec::<String>::new());
        let split = NetworkAnswer {
            subnets: Ok(vec![found("subnet-a", "vpc-1"), found("subnet-b", "vpc-2")]),
            ..good.clone()
        };
        let problems = network_problems(&target(), &split);
        assert!(
            problems[0].contains("different VPCs (vpc-1, vpc-2)"),
            "{problems:?}"
        );
        let elsewhere = NetworkAnswer {
            security_groups: Ok(vec![found("sg-1", "vpc-9")]),
            ..good.clone()
        };
        assert_eq!(
            network_problems(&target(), &elsewhere),
            vec![
                "security group sg-1 is in vpc-9, the subnets in vpc-1: RunTask refuses a group of another VPC"
            ]
        );
        let missing = NetworkAnswer {
            subnets: Err(Ec2Error::Refused {
                code: "InvalidSubnetID.NotFound".into(),
                message: "The subnet ID 'subnet-b' does not exist".into(),
            }),
            security_groups: Ok(vec![]),
        };
        let problems = network_problems(&target(), &missing);
        assert_eq!(
            problems,
            vec![
                "subnets not found in eu-west-1: The subnet ID 'subnet-b' does not exist (--subnets, the chart's fargate.subnets)",
                "security group sg-1 not found in eu-west-1 (--security-groups, the chart's fargate.securityGroups)",
            ]
        );
    }

    #[test]
    fn a_describe_the_node_may_not_make_is_unchecked_not_a_problem() {
        let denied = || {
            Err(Ec2Error::Refused {
                code: "UnauthorizedOperation".into(),
                message: "You are not authorized to perform this operation.".into(),
            })
        };
        let answer = NetworkAnswer {
            subnets: denied(),
            security_groups: denied(),
        };
        assert!(network_problems(&target(), &answer).is_empty());
        assert_eq!(
            unchecked(&answer),
            ["ec2:DescribeSubnets", "ec2:DescribeSecurityGroups"]
        );
        let unreachable = NetworkAnswer {
            subnets: Err(Ec2Error::Failed("connection refused".into())),
            security_groups: Ok(vec![found("sg-1", "vpc-1")]),
        };
        assert_eq!(
            network_problems(&target(), &unreachable),
            vec!["cannot describe the subnets in eu-west-1: connection refused"]
        );
    }

    #[test]
    fn a_missing_cluster_is_named_with_its_region() {
        let problem = cluster_problem(&target(), &ClusterAnswer::Failed("MISSING".into()));
        assert!(
            problem
                .as_deref()
                .is_some_and(|p| p.starts_with("ECS cluster burst not found in eu-west-1")),
            "{problem:?}"
        );
        assert_eq!(
            cluster_problem(&target(), &ClusterAnswer::Found("ACTIVE".into())),
            None
        );
        assert_eq!(
            cluster_problem(&target(), &ClusterAnswer::Found("INACTIVE".into())).as_deref(),
            Some("ECS cluster burst in eu-west-1 is INACTIVE, not ACTIVE")
        );
    }

    #[test]
    fn the_log_group_must_be_listed_by_its_exact_name() {
        assert_eq!(
            log_group_problem(&target(), &["/spillway/pods".into()]),
            None
        );
        let problem = log_group_problem(&target(), &["/spillway/pods-old".into()]);
        assert!(
            problem
                .as_deref()
                .is_some_and(|p| p
                    .starts_with("CloudWatch Logs group /spillway/pods not found in eu-west-1")),
            "{problem:?}"
        );
    }

    #[test]
    fn no_execution_role_is_a_problem() {
        assert_eq!(execution_role_problem(&target()), None);
        let without = SetupTarget {
            has_execution_role: false,
            ..target()
        };
        assert!(
            execution_role_problem(&without)
                .is_some_and(|p| p.starts_with("no task execution role"))
        );
    }
}
