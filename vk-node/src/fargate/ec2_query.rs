//! The two EC2 reads the set-up check needs (`DescribeSubnets`, `DescribeSecurityGroups`)
//! as signed calls to EC2's Query API, with the SDK's own signer (aws-sigv4) and
//! credentials. The generated EC2 SDK crate would do the same at the cost of minutes of
//! build time on every cold build, for two read-only calls.

use std::time::{Duration, SystemTime};

use aws_sdk_ecs::config::ProvideCredentials;
use aws_sdk_ecs::config::SharedCredentialsProvider;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;

/// The EC2 API version the calls name (the Query API's current one).
const API_VERSION: &str = "2016-11-15";
/// The longest one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// One subnet or security group EC2 listed, with its VPC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// `subnet-…` or `sg-…`.
    pub id: String,
    /// The VPC it belongs to.
    pub vpc: String,
}

/// Why a call listed nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Ec2Error {
    /// EC2 answered with an error: its code and message.
    #[error("{code}: {message}")]
    Refused {
        /// `InvalidSubnetID.NotFound`, `UnauthorizedOperation`, …
        code: String,
        /// EC2's message (it names the ids at fault).
        message: String,
    },
    /// No answer, or one that is not EC2's XML.
    #[error("{0}")]
    Failed(String),
}

/// Signed EC2 Query API calls in one region.
#[derive(Clone)]
pub struct Ec2Query {
    http: reqwest::Client,
    endpoint: String,
    region: String,
    credentials: Option<SharedCredentialsProvider>,
}

impl Ec2Query {
    /// Calls in `region`, at `endpoint` when given (a local test endpoint) or EC2's own.
    pub fn new(
        region: &str,
        endpoint: Option<&str>,
        credentials: Option<SharedCredentialsProvider>,
    ) -> Self {
        let endpoint = match endpoint {
            Some(endpoint) => endpoint.trim_end_matches('/').to_owned(),
            None => default_endpoint(region),
        };
        Self {
            http: reqwest::Client::builder()
                .timeout(CALL_TIMEOUT)
                .build()
                .unwrap_or_default(),
            endpoint,
            region: region.to_owned(),
            credentials,
        }
    }

    /// `DescribeSubnets` of `ids`.
    pub async fn subnets(&self, ids: &[String]) -> Result<Vec<Found>, Ec2Error> {
        let xml = self.call("DescribeSubnets", "SubnetId", ids).await?;
        listed(&xml, "subnetSet", "subnetId")
    }

    /// `DescribeSecurityGroups` of `ids`.
    pub async fn security_groups(&self, ids: &[String]) -> Result<Vec<Found>, Ec2Error> {
        let xml = self.call("DescribeSecurityGroups", "GroupId", ids).await?;
        listed(&xml, "securityGroupInfo", "groupId")
    }

    async fn call(&self, action: &str, id_param: &str, ids: &[String]) -> Result<String, Ec2Error> {
        let body = form_body(action, id_param, ids);
        let credentials = self
            .credentials
            .as_ref()
            .ok_or_else(|| Ec2Error::Failed("no AWS credentials".into()))?
            .provide_credentials()
            .await
            .map_err(|e| Ec2Error::Failed(format!("no AWS credentials: {e}")))?;
        let identity = Identity::from(credentials);
        let url = format!("{}/", self.endpoint);
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("ec2")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| Ec2Error::Failed(format!("signing the EC2 call: {e}")))?
            .into();
        let headers = [("content-type", content_type)];
        let signable = SignableRequest::new(
            "POST",
            &url,
            headers.into_iter(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| Ec2Error::Failed(format!("signing the EC2 call: {e}")))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| Ec2Error::Failed(format!("signing the EC2 call: {e}")))?
            .into_parts();
        let mut request = self
            .http
            .post(&url)
            .header("content-type", content_type)
            .body(body);
        for (name, value) in instructions.headers() {
            request = request.header(name, value);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Ec2Error::Failed(error_chain(&e)))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| Ec2Error::Failed(error_chain(&e)))?;
        if status.is_success() {
            Ok(text)
        } else {
            Err(refusal(&text).unwrap_or_else(|| {
                Ec2Error::Failed(format!("EC2 answered {status} without an error code"))
            }))
        }
    }
}

/// The Query API's form: the action, the version and the ids numbered from 1.
fn form_body(action: &str, id_param: &str, ids: &[String]) -> String {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("Action", action)
        .append_pair("Version", API_VERSION);
    for (i, id) in ids.iter().enumerate() {
        form.append_pair(&format!("{id_param}.{}", i + 1), id);
    }
    form.finish()
}

/// EC2's endpoint in `region` (China's regions have their own domain).
fn default_endpoint(region: &str) -> String {
    let domain = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    format!("https://ec2.{region}.{domain}")
}

/// The error and its sources, one sentence.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The items of `set` in a Describe answer: each one's `id_tag` and `vpcId`.
fn listed(xml: &str, set: &str, id_tag: &str) -> Result<Vec<Found>, Ec2Error> {
    let document = roxmltree::Document::parse(xml)
        .map_err(|e| Ec2Error::Failed(format!("EC2's answer is not XML: {e}")))?;
    let child_text = |node: roxmltree::Node<'_, '_>, tag: &str| {
        node.children()
            .find(|c| c.has_tag_name(tag))
            .and_then(|c| c.text())
            .unwrap_or_default()
            .to_owned()
    };
    let Some(set) = document.descendants().find(|n| n.has_tag_name(set)) else {
        return Err(Ec2Error::Failed(format!("EC2's answer has no {set}")));
    };
    Ok(set
        .children()
        .filter(|n| n.has_tag_name("item"))
        .map(|item| Found {
            id: child_text(item, id_tag),
            vpc: child_text(item, "vpcId"),
        })
        .collect())
}

/// The first `Errors/Error` of an error answer.
fn refusal(xml: &str) -> Option<Ec2Error> {
    let document = roxmltree::Document::parse(xml).ok()?;
    let error = document.descendants().find(|n| n.has_tag_name("Error"))?;
    let text = |tag: &str| {
        error
            .children()
            .find(|c| c.has_tag_name(tag))
            .and_then(|c| c.text())
            .map(str::to_owned)
    };
    Some(Ec2Error::Refused {
        code: text("Code")?,
        message: text("Message").unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_answers_list_ids_with_their_vpcs() {
        // The shape of EC2's DescribeSubnets answer (its API reference's example, trimmed).
        let xml = r#"<DescribeSubnetsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
            <requestId>7a62c49f-347e-4fc4-9331-6e8eEXAMPLE</requestId>
            <subnetSet>
              <item><subnetId>subnet-9d4a7b6c</subnetId><state>available</state><vpcId>vpc-1a2b3c4d</vpcId></item>
              <item><subnetId>subnet-6e7f829e</subnetId><vpcId>vpc-1a2b3c4d</vpcId></item>
            </subnetSet>
          </DescribeSubnetsResponse>"#;
        assert_eq!(
            listed(xml, "subnetSet", "subnetId").unwrap(),
            vec![
                Found {
                    id: "subnet-9d4a7b6c".into(),
                    vpc: "vpc-1a2b3c4d".into()
                },
                Found {
                    id: "subnet-6e7f829e".into(),
                    vpc: "vpc-1a2b3c4d".into()
                },
            ]
        );
        assert!(matches!(
            listed("<Other/>", "subnetSet", "subnetId"),
            Err(Ec2Error::Failed(_))
        ));
    }

    #[test]
    fn error_answers_give_code_and_message() {
        let xml = r#"<Response><Errors><Error><Code>InvalidSubnetID.NotFound</Code>
            <Message>The subnet ID 'subnet-x' does not exist</Message></Error></Errors>
            <RequestID>ea966190-f9aa-478e-9ede-example</RequestID></Response>"#;
        assert_eq!(
            refusal(xml),
            Some(Ec2Error::Refused {
                code: "InvalidSubnetID.NotFound".into(),
                message: "The subnet ID 'subnet-x' does not exist".into()
            })
        );
        assert_eq!(refusal("not xml"), None);
    }

    #[test]
    fn ids_are_numbered_from_one() {
        assert_eq!(
            form_body(
                "DescribeSubnets",
                "SubnetId",
                &["subnet-a".into(), "subnet-b".into()]
            ),
            "Action=DescribeSubnets&Version=2016-11-15&SubnetId.1=subnet-a&SubnetId.2=subnet-b"
        );
    }

    #[test]
    fn the_endpoint_follows_the_region_unless_given() {
        assert_eq!(
            default_endpoint("eu-west-1"),
            "https://ec2.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            default_endpoint("cn-north-1"),
            "https://ec2.cn-north-1.amazonaws.com.cn"
        );
        let query = Ec2Query::new("us-east-1", Some("http://127.0.0.1:5000/"), None);
        assert_eq!(query.endpoint, "http://127.0.0.1:5000");
    }
}
