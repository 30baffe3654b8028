# overvisor-op: vm.action v1
# One lifecycle action. The state check comes first so an invalid transition
# is an invalid_state answer, not whatever the cmdlet would say.
Invoke-OvMain 'vm.action' {
    param($p)
    $vm = Get-OvVm $p.vm
    $state = $vm.State.ToString()
    $from = @{
        start = @('Off', 'Saved'); shutdown = @('Running'); reboot = @('Running')
        force_stop = @('Running', 'Paused', 'Saved', 'Starting', 'Stopping')
        reset = @('Running', 'Paused'); suspend = @('Running'); resume = @('Paused'); save = @('Running', 'Paused')
    }
    if (-not $from.ContainsKey($p.action)) { Fail 'bad_params' "unknown action $($p.action)" }
    if ($from[$p.action] -notcontains $state) { Fail 'invalid_state' "VM is $state" }
    switch ($p.action) {
        'start' { Hyper-V\Start-VM -VM $vm }
        'force_stop' { Hyper-V\Stop-VM -VM $vm -TurnOff -Force -Confirm:$false }
        'reset' { Hyper-V\Restart-VM -VM $vm -Force -Confirm:$false }
        'suspend' { Hyper-V\Suspend-VM -VM $vm }
        'resume' { Hyper-V\Resume-VM -VM $vm }
        'save' { Hyper-V\Save-VM -VM $vm }
        default {
            # Graceful: ask the guest's shutdown integration service, which
            # returns at once (Hyper-V\Stop-VM would wait for the guest).
            $sc = CimCmdlets\Get-CimInstance -Namespace 'root\virtualization\v2' -ClassName Msvm_ShutdownComponent |
                Where-Object { $_.SystemName -eq $vm.Id.ToString() }
            if (-not $sc -or -not ($sc.EnabledState -eq 2)) { Fail 'no_shutdown_service' "the guest has no running shutdown integration service" }
            $method = if ($p.action -eq 'reboot') { 'InitiateReboot' } else { 'InitiateShutdown' }
            $r = CimCmdlets\Invoke-CimMethod -InputObject $sc -MethodName $method -Arguments @{ Force = $true; Reason = 'Overvisor' }
            if ($r.ReturnValue -ne 0) { Fail 'host_error' "$method returned $($r.ReturnValue)" }
        }
    }
    $null
}
