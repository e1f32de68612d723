//! CrowdStrike Falcon RTR adapter (in progress).
