# overvisor-op: vm.addresses v1
Invoke-OvMain 'vm.addresses' {
    param($p)
    # One pipeline for every VM of the host. An adapter's IPAddresses stay
    # empty until the guest's KVP integration service reports them.
    , @(Hyper-V\Get-VM | Hyper-V\Get-VMNetworkAdapter | ForEach-Object {
        [ordered]@{ id = $_.VMId.ToString(); ips = @($_.IPAddresses) } })
}
