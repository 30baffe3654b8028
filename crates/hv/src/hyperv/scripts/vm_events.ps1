# overvisor-op: vm.events v1
# Long-lived: one JSON line per EnabledState change, a heartbeat when quiet.
$script:OvOp = 'vm.events'
$names = @{ 2 = 'Running'; 3 = 'Off'; 32768 = 'Paused'; 32769 = 'Saved'; 32770 = 'Starting'; 32773 = 'Saving'; 32774 = 'Stopping'; 32776 = 'Pausing'; 32777 = 'Resuming'; 10 = 'Reset' }
$p = ConvertFrom-Json -InputObject ([Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($OvParamsB64)))
$query = "SELECT * FROM __InstanceModificationEvent WITHIN 1 WHERE TargetInstance ISA 'Msvm_ComputerSystem' AND TargetInstance.EnabledState <> PreviousInstance.EnabledState"
CimCmdlets\Register-CimIndicationEvent -Namespace 'root\virtualization\v2' -Query $query -SourceIdentifier 'overvisor-state' | Out-Null
Write-OvLine ([ordered]@{ ok = $true; op = 'vm.events'; data = [ordered]@{ type = 'ready'; time = (Get-OvTime (Get-Date)) }; error = $null })
while ($true) {
    $e = Microsoft.PowerShell.Utility\Wait-Event -SourceIdentifier 'overvisor-state' -Timeout ([int]$p.heartbeat_seconds)
    if (-not $e) {
        Write-OvLine ([ordered]@{ ok = $true; op = 'vm.events'; data = [ordered]@{ type = 'heartbeat'; time = (Get-OvTime (Get-Date)) }; error = $null })
        continue
    }
    $t = $e.SourceEventArgs.NewEvent.TargetInstance
    if ($t.Caption -eq 'Virtual Machine') {
        $s = $names[[int]$t.EnabledState]; if (-not $s) { $s = 'Other' }
        Write-OvLine ([ordered]@{ ok = $true; op = 'vm.events'; error = $null
            data = [ordered]@{ type = 'state'; id = $t.Name; name = $t.ElementName; state = $s; time = (Get-OvTime $e.TimeGenerated) } })
    }
    Microsoft.PowerShell.Utility\Remove-Event -EventIdentifier $e.EventIdentifier
}
