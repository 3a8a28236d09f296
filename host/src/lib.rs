//! kh-host: the one seam through which kh-agent touches its host.
