# overvisor-op: vm.delete v1
# Hyper-V\Remove-VM never deletes disks; their paths are collected first, and a disk
# another VM also uses is never deleted.
Invoke-OvMain 'vm.delete' {
    param($p)
    $vm = Get-OvVm $p.vm
    $state = $vm.State.ToString()
    if (@('Off', 'Saved') -notcontains $state) { Fail 'invalid_state' "VM is $state" }
    $paths = @(Hyper-V\Get-VMHardDiskDrive -VM $vm | ForEach-Object { $_.Path } | Where-Object { $_ })
    if ($p.with_disks) {
        $others = @(Hyper-V\Get-VM | Where-Object { $_.Id -ne $vm.Id } | Hyper-V\Get-VMHardDiskDrive | ForEach-Object { $_.Path })
        $shared = @($paths | Where-Object { $others -contains $_ })
        if ($shared.Count -gt 0) { Fail 'shared_disk' "disks used by other VMs: $($shared -join ', ')" }
    }
    Hyper-V\Remove-VM -VM $vm -Force -Confirm:$false
    if ($p.with_disks) { foreach ($d in $paths) { Microsoft.PowerShell.Management\Remove-Item -LiteralPath $d -Force } }
    [ordered]@{ disks = $paths; disks_removed = [bool]$p.with_disks }
}
