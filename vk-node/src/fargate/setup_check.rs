//! The Fargate node's set-up, checked at start and until it holds: an execution role,
//! AWS credentials the node's identity answers to (STS `GetCallerIdentity`), the ECS
//! cluster (`DescribeClusters`) and the CloudWatch Logs group (`DescribeLogGroups`).
//! Each problem is one sentence an operator can act on; the node stays tainted while any
//! remains (subnets and security groups are not checked: that needs the EC2 API, and
//! RunTask names a bad one in its refusal).

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
        }
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
