//! CrowdStrike Falcon simulator (in progress).
