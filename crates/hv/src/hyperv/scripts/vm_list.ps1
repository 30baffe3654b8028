# overvisor-op: vm.list v1
Invoke-OvMain 'vm.list' {
    param($p)
    , @(Hyper-V\Get-VM | ForEach-Object { ConvertTo-OvVm $_ })
}
