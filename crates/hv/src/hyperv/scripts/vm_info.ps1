# overvisor-op: vm.info v1
Invoke-OvMain 'vm.info' {
    param($p)
    $vm = Get-OvVm $p.vm
    $info = ConvertTo-OvVm $vm
    $info.generation = [int]$vm.Generation
    $info.disks = @(Hyper-V\Get-VMHardDiskDrive -VM $vm | ForEach-Object {
        [ordered]@{ controller = $_.ControllerType.ToString(); number = [int]$_.ControllerNumber
            location = [int]$_.ControllerLocation; path = $_.Path; kind = 'hard_disk' } })
    $info.disks += @(Hyper-V\Get-VMDvdDrive -VM $vm | ForEach-Object {
        [ordered]@{ controller = $_.ControllerType.ToString(); number = [int]$_.ControllerNumber
            location = [int]$_.ControllerLocation; path = $_.Path; kind = 'dvd' } })
    # IPAddresses stay empty until the guest's KVP integration service reports them.
    $info.nics = @(Hyper-V\Get-VMNetworkAdapter -VM $vm | ForEach-Object {
        [ordered]@{ name = $_.Name; mac = $_.MacAddress; switch = $_.SwitchName; ips = @($_.IPAddresses) } })
    $info
}
