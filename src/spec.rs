//! The cluster spec (cluster.yaml).
