//! Redis Cluster: three masters started by the harness; quotas in three key groups
//! (three hash tags, spread over the masters), two accounts each, hammered by four
//! processes. Any key of one decision outside its group's slot would fail with CROSSSLOT.

use sluice_testkit::RedisCluster;

use crate::concurrency::run_hammer;

#[test]
fn a_three_master_cluster_keeps_every_quota_exact() {
    let cluster = RedisCluster::start();
    run_hammer(&cluster.url(), 3, 2);
}
