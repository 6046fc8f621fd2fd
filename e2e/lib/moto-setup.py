"""Prepares moto for the test bed: a VPC with DNS hostnames on, a subnet and a security
group (Fargate awsvpc tasks need them), a security group of another VPC, and ECS tasks that stay RUNNING until stopped.
Prints shell `export` lines with the ids."""

import json
import sys
import urllib.request

import boto3

endpoint = sys.argv[1]
region = "us-east-1"
ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name=region,
                   aws_access_key_id="testing", aws_secret_access_key="testing")

vpcs = ec2.describe_vpcs(Filters=[{"Name": "tag:spillway-testbed", "Values": ["true"]}])["Vpcs"]
if vpcs:
    vpc_id = vpcs[0]["VpcId"]
else:
    vpc_id = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    ec2.create_tags(Resources=[vpc_id], Tags=[{"Key": "spillway-testbed", "Value": "true"}])
ec2.modify_vpc_attribute(VpcId=vpc_id, EnableDnsHostnames={"Value": True})

subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
subnet_id = subnets[0]["SubnetId"] if subnets else ec2.create_subnet(
    VpcId=vpc_id, CidrBlock="10.42.1.0/24", AvailabilityZone=f"{region}a")["Subnet"]["SubnetId"]

groups = ec2.describe_security_groups(Filters=[
    {"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "group-name", "Values": ["spillway-burst"]}])["SecurityGroups"]
sg_id = groups[0]["GroupId"] if groups else ec2.create_security_group(
    GroupName="spillway-burst", Description="Spillway burst pods", VpcId=vpc_id)["GroupId"]

# A security group of another VPC (the default VPC's own), for the set-up check's case of
# a group the subnets' VPC does not have.
default_vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
other_vpc = default_vpcs[0]["VpcId"] if default_vpcs else ec2.create_vpc(CidrBlock="10.43.0.0/16")["Vpc"]["VpcId"]
others = ec2.describe_security_groups(Filters=[
    {"Name": "vpc-id", "Values": [other_vpc]}, {"Name": "group-name", "Values": ["spillway-elsewhere"]}])["SecurityGroups"]
other_sg_id = others[0]["GroupId"] if others else ec2.create_security_group(
    GroupName="spillway-elsewhere", Description="A group of another VPC", VpcId=other_vpc)["GroupId"]

# By default every DescribeTasks call moves a task one step towards STOPPED.
body = json.dumps({"model_name": "ecs::task",
                   "transition": {"progression": "manual", "times": 1000000}}).encode()
request = urllib.request.Request(f"{endpoint}/moto-api/state-manager/set-transition", data=body, method="POST")
urllib.request.urlopen(request).read()

print(f"export SPILLWAY_TESTBED_VPC={vpc_id}")
print(f"export SPILLWAY_TESTBED_SUBNET={subnet_id}")
print(f"export SPILLWAY_TESTBED_SECURITY_GROUP={sg_id}")
print(f"export SPILLWAY_TESTBED_OTHER_VPC_SECURITY_GROUP={other_sg_id}")
