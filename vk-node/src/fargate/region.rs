//! The AWS region the Fargate node calls: `--aws-region` when given, else the SDK's
//! default chain (`AWS_REGION`, `AWS_DEFAULT_REGION`, the profile, the instance metadata),
//! which is how EKS hands a pod its region under IRSA and Pod Identity.

use aws_config::default_provider::region::DefaultRegionChain;

/// The region to use, or a sentence saying why there is none.
pub async fn resolve(flag: Option<&str>) -> Result<String, String> {
    match flag {
        Some("") => Err("--aws-region: empty; name a region or leave it unset".into()),
        Some(region) => Ok(region.to_owned()),
        None => DefaultRegionChain::builder()
            .build()
            .region()
            .await
            .map(|region| region.to_string())
            .ok_or_else(|| {
                "no AWS region: set --aws-region or AWS_REGION (EKS sets AWS_REGION for \
                 IRSA and Pod Identity; elsewhere the profile or the instance metadata \
                 must name one)"
                    .into()
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_flag_wins_and_an_empty_one_is_refused() {
        assert_eq!(resolve(Some("eu-west-1")).await.unwrap(), "eu-west-1");
        assert!(
            resolve(Some(""))
                .await
                .unwrap_err()
                .starts_with("--aws-region")
        );
    }
}
