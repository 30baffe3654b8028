# overvisor-op: vm.state v1
Invoke-OvMain 'vm.state' {
    param($p)
    (Get-OvVm $p.vm).State.ToString()
}
