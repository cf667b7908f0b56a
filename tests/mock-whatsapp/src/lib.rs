//! Mock WhatsApp network.
