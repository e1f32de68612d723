//! Microsoft Defender for Endpoint adapter (in progress).
