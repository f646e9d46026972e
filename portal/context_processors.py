from portal.models import Challenge


def challenge(request):
    return {"current_challenge": Challenge.objects.current()}
