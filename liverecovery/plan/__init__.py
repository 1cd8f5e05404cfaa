"""Recovery plans: many VMs in boot groups, one job each, within the ESX hosts' limits."""
