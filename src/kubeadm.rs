//! kubeadm configuration rendering; being written.
